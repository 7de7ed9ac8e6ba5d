// What survives a reload of this tab: the key, and the meditation being watched with what was seen of it.
// sessionStorage: gone when the tab closes, never shared with another tab or person.

const KEY = "stillpoint.apiKey";
const JOB = "stillpoint.job";

export type StageRow = {
  stage: number;
  state: number;
  // Seconds since the job was accepted when the stage started, and how long it ran once it ended.
  startedAtSeconds: number;
  tookSeconds: number | null;
  detail: string;
  firstSequence: number;
};

export type Asset = { uri: string; subtitlesUri: string };

export type SavedJob = {
  meditation: string;
  conversation: string;
  lastSequence: number;
  lastElapsedSeconds: number;
  finalState: number | null;
  stages: StageRow[];
  preview: Asset | null;
  quick: Asset | null;
  enhanced: Asset | null;
  subtitlesUri: string;
  positionSeconds: number;
};

export function loadKey(): string | null {
  return sessionStorage.getItem(KEY);
}

export function saveKey(key: string | null): void {
  if (key === null) sessionStorage.removeItem(KEY);
  else sessionStorage.setItem(KEY, key);
}

export function loadJob(): SavedJob | null {
  const raw = sessionStorage.getItem(JOB);
  if (!raw) return null;
  try {
    return JSON.parse(raw) as SavedJob;
  } catch {
    sessionStorage.removeItem(JOB);
    return null;
  }
}

export function saveJob(job: SavedJob | null): void {
  if (job === null) sessionStorage.removeItem(JOB);
  else sessionStorage.setItem(JOB, JSON.stringify(job));
}
