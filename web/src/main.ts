// Stillpoint's page: sign in with an API key, pick or write a conversation, and watch its meditation arrive
// stage by stage — the live preview first, then QUICK, then ENHANCED, each taking over where the last was.
import "./style.css";
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampDate, type Duration } from "@bufbuild/protobuf/wkt";
import sample from "../../examples/conversation.json";
import { gatewayClient } from "./api";
import {
  MeditationState,
  MessageRole,
  Stage,
  StageState,
  VideoQuality,
  type Conversation,
  type GenerateMeditationResponse,
  type WatchMeditationResponse,
} from "./gen/stillpoint/gateway/v1/gateway_service_pb";
import { Player } from "./player";
import { loadJob, loadKey, saveJob, saveKey, type SavedJob } from "./storage";

type MeditationEvent = GenerateMeditationResponse | WatchMeditationResponse;

const STAGE_NAMES: Record<number, string> = {
  [Stage.SOURCE]: "Reading the conversation",
  [Stage.TRANSCRIPT]: "Writing the script",
  [Stage.IMAGE]: "Painting the picture",
  [Stage.NARRATION]: "Speaking the narration",
  [Stage.QUICK_VIDEO]: "First video",
  [Stage.ENHANCED_VIDEO]: "Full-quality video",
  [Stage.UPLOAD]: "Storing the videos",
};
const STATE_NAMES: Record<number, string> = {
  [StageState.STARTED]: "in progress",
  [StageState.SUCCEEDED]: "done",
  [StageState.FAILED]: "failed",
  [StageState.STOPPED]: "stopped",
};
const FINAL_NAMES: Record<number, string> = {
  [MeditationState.SUCCEEDED]: "Your meditation is ready.",
  [MeditationState.FAILED]: "The meditation could not be made.",
  [MeditationState.CANCELLED]: "The meditation was cancelled.",
};
// Resuming a cut stream: wait this long, doubling up to the cap.
const RESUME_FIRST_DELAY_MS = 500;
const RESUME_MAX_DELAY_MS = 8000;

const $ = <T extends HTMLElement>(id: string): T => {
  const element = document.getElementById(id);
  if (!element) throw new Error(`#${id} is missing from the page`);
  return element as T;
};

const ui = {
  status: $<HTMLParagraphElement>("status"),
  alert: $<HTMLParagraphElement>("alert"),
  signInSection: $<HTMLElement>("sign-in-section"),
  signInForm: $<HTMLFormElement>("sign-in-form"),
  apiKey: $<HTMLInputElement>("api-key"),
  signOut: $<HTMLButtonElement>("sign-out"),
  workspace: $<HTMLDivElement>("workspace"),
  meditationSection: $<HTMLElement>("meditation-section"),
  meditationHeading: $<HTMLHeadingElement>("meditation-heading"),
  summary: $<HTMLParagraphElement>("job-summary"),
  stages: $<HTMLOListElement>("stages"),
  player: $<HTMLDivElement>("player"),
  cancel: $<HTMLButtonElement>("cancel"),
  download: $<HTMLAnchorElement>("download"),
  soundNote: $<HTMLParagraphElement>("sound-note"),
  unmute: $<HTMLButtonElement>("unmute"),
  newForm: $<HTMLFormElement>("new-form"),
  newTitle: $<HTMLInputElement>("new-title"),
  newText: $<HTMLTextAreaElement>("new-text"),
  useSample: $<HTMLButtonElement>("use-sample"),
  generate: $<HTMLButtonElement>("generate"),
  conversations: $<HTMLUListElement>("conversations"),
  conversationsEmpty: $<HTMLParagraphElement>("conversations-empty"),
};

let apiKey = loadKey();
const gateway = gatewayClient(() => apiKey);
const player = new Player($<HTMLVideoElement>("video-a"), $<HTMLVideoElement>("video-b"));
let job: SavedJob | null = null;
// Ends the stream being read (a new job, sign-out); a new controller for each job.
let streamAbort: AbortController | null = null;
// The meditation whose Cancel was pressed: nothing of it is played while the cancel is under way.
let cancelling: string | null = null;
let clock: number | undefined;
let clockBase = { elapsedSeconds: 0, at: 0 };

player.onSoundBlocked = () => (ui.soundNote.hidden = false);
player.onPosition = (seconds) => {
  if (job) {
    job.positionSeconds = seconds;
    saveJob(job);
  }
};

function say(message: string): void {
  ui.status.textContent = message;
}

function complain(message: string | null): void {
  ui.alert.hidden = message === null;
  ui.alert.textContent = message ?? "";
}

function describe(error: unknown): string {
  if (error instanceof ConnectError) {
    if (error.code === Code.Unauthenticated) return "That API key was not accepted. Check it and sign in again.";
    if (error.code === Code.ResourceExhausted) return `Too much at once: ${error.rawMessage}`;
    return error.rawMessage || error.message;
  }
  return error instanceof Error ? error.message : String(error);
}

/** A new request id (a version-4 UUID): `crypto.randomUUID` exists only on secure origins, so it is made
 * from `getRandomValues`, which every origin has. */
function requestId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function seconds(duration: Duration | undefined): number {
  if (!duration) return 0;
  return Number(duration.seconds) + duration.nanos / 1e9;
}

function formatSeconds(value: number): string {
  return `${value.toFixed(1)} s`;
}

// --- Signing in and out -------------------------------------------------------------------------------

async function signIn(key: string): Promise<void> {
  complain(null);
  const previous = apiKey;
  apiKey = key;
  try {
    await refreshConversations();
  } catch (error) {
    apiKey = previous;
    complain(describe(error));
    return;
  }
  if (previous !== key) forgetJob();
  saveKey(key);
  showSignedIn();
  say("Signed in.");
  ui.newText.focus();
}

function signOut(): void {
  streamAbort?.abort();
  apiKey = null;
  saveKey(null);
  forgetJob();
  ui.conversations.replaceChildren();
  ui.workspace.hidden = true;
  ui.signOut.hidden = true;
  ui.signInSection.hidden = false;
  ui.apiKey.value = "";
  say("Signed out.");
  ui.apiKey.focus();
}

function showSignedIn(): void {
  ui.signInSection.hidden = true;
  ui.workspace.hidden = false;
  ui.signOut.hidden = false;
}

// --- Conversations ------------------------------------------------------------------------------------

async function refreshConversations(): Promise<void> {
  const [listed, meditations] = await Promise.all([
    gateway.listConversations({ pageSize: 50 }),
    gateway.listMeditations({ pageSize: 100 }),
  ]);
  // Newest first: the first meditation seen of a conversation is its latest.
  const latest = new Map<string, string>();
  for (const meditation of meditations.meditations) {
    if (!latest.has(meditation.conversation)) latest.set(meditation.conversation, meditation.name);
  }
  ui.conversations.replaceChildren(
    ...listed.conversations.map((conversation) => conversationItem(conversation, latest.get(conversation.name))),
  );
  ui.conversationsEmpty.hidden = listed.conversations.length > 0;
}

function conversationItem(conversation: Conversation, meditation: string | undefined): HTMLLIElement {
  const item = document.createElement("li");
  item.dataset.name = conversation.name;
  const label = document.createElement("span");
  label.className = "title";
  label.textContent = conversation.title || "Untitled conversation";
  const when = document.createElement("span");
  when.className = "help";
  if (conversation.createTime) when.textContent = timestampDate(conversation.createTime).toLocaleString();
  const generate = button("Generate", () => void startJob(conversation.name));
  generate.setAttribute("aria-label", `Generate a meditation from ${label.textContent}`);
  const remove = button("Delete", () => confirmDelete(item, remove, conversation));
  remove.classList.add("quiet");
  remove.setAttribute("aria-label", `Delete: ${label.textContent}`);
  const actions = document.createElement("span");
  actions.className = "actions";
  actions.append(generate);
  if (meditation) {
    const watch = button("Watch", () => void watchJob(conversation.name, meditation));
    watch.classList.add("quiet");
    watch.setAttribute("aria-label", `Watch the latest meditation of ${label.textContent}`);
    actions.append(watch);
  }
  actions.append(remove);
  item.append(label, when, actions);
  return item;
}

function confirmDelete(item: HTMLLIElement, remove: HTMLButtonElement, conversation: Conversation): void {
  if (remove.dataset.confirming !== "true") {
    remove.dataset.confirming = "true";
    remove.textContent = "Delete for good";
    remove.setAttribute("aria-label", `Delete for good: ${conversation.title || "Untitled conversation"}`);
    say(`Press “Delete for good” to erase “${conversation.title || "this conversation"}” and its meditations.`);
    return;
  }
  void (async () => {
    // Stop showing it first: a player still reading a video that is being erased would get 404s.
    if (job?.conversation === conversation.name) {
      streamAbort?.abort();
      forgetJob();
    }
    try {
      await gateway.deleteConversation({ name: conversation.name });
    } catch (error) {
      complain(describe(error));
      return;
    }
    item.remove();
    ui.conversationsEmpty.hidden = ui.conversations.children.length > 0;
    say("The conversation and everything made from it were deleted.");
  })();
}

function button(text: string, onClick: () => void): HTMLButtonElement {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  element.addEventListener("click", onClick);
  return element;
}

type MessageInput = { role: MessageRole; text: string };

function parseConversation(text: string, title: string): { title: string; messages: MessageInput[] } {
  const trimmed = text.trim();
  if (trimmed.startsWith("{")) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(trimmed);
    } catch {
      throw new Error("That looks like JSON but could not be read. Check its brackets and quotes.");
    }
    const record = parsed as { title?: unknown; messages?: unknown };
    if (!Array.isArray(record.messages) || record.messages.length === 0) {
      throw new Error("A pasted conversation needs a list of messages.");
    }
    const roles: Record<string, MessageRole> = {
      user: MessageRole.USER,
      assistant: MessageRole.ASSISTANT,
      system: MessageRole.SYSTEM,
    };
    const messages = record.messages.map((message: { role?: unknown; text?: unknown }, index: number) => {
      const role = roles[String(message.role)];
      if (role === undefined || typeof message.text !== "string" || !message.text.trim()) {
        throw new Error(`Message ${index + 1} needs a role (user, assistant or system) and some text.`);
      }
      return { role, text: message.text };
    });
    return { title: title || (typeof record.title === "string" ? record.title : ""), messages };
  }
  return { title: title || trimmed.slice(0, 60), messages: [{ role: MessageRole.USER, text: trimmed }] };
}

async function createAndGenerate(): Promise<void> {
  complain(null);
  let conversation;
  try {
    conversation = parseConversation(ui.newText.value, ui.newTitle.value.trim());
  } catch (error) {
    complain(describe(error));
    ui.newText.focus();
    return;
  }
  ui.generate.disabled = true;
  try {
    const created = await gateway.createConversation({ ...conversation, requestId: requestId() });
    ui.newForm.reset();
    await refreshConversations();
    await startJob(created.conversation!.name);
  } catch (error) {
    complain(describe(error));
  } finally {
    ui.generate.disabled = false;
  }
}

// --- The meditation -----------------------------------------------------------------------------------

function forgetJob(): void {
  job = null;
  saveJob(null);
  player.reset();
  stopClock();
  ui.stages.replaceChildren();
  ui.meditationSection.hidden = true;
  ui.download.hidden = true;
  ui.cancel.hidden = true;
  ui.soundNote.hidden = true;
}

function freshJob(conversation: string, meditation: string): SavedJob {
  return {
    meditation,
    conversation,
    lastSequence: 0,
    lastElapsedSeconds: 0,
    finalState: null,
    stages: [],
    preview: null,
    quick: null,
    enhanced: null,
    subtitlesUri: "",
    positionSeconds: 0,
  };
}

/** Shows an earlier meditation from its first event (a running one is followed to its end). */
async function watchJob(conversation: string, meditation: string): Promise<void> {
  complain(null);
  streamAbort?.abort();
  forgetJob();
  job = freshJob(conversation, meditation);
  saveJob(job);
  showJob();
  ui.meditationHeading.focus();
  say("Loading the meditation…");
  await follow((streamAbort = new AbortController()));
}

async function startJob(conversation: string): Promise<void> {
  complain(null);
  streamAbort?.abort();
  forgetJob();
  // No name until the gateway accepts it.
  job = freshJob(conversation, "");
  showJob();
  ui.meditationHeading.focus();
  say("Starting your meditation…");
  const abort = (streamAbort = new AbortController());
  try {
    const stream = gateway.generateMeditation(
      { conversation, requestId: requestId() },
      { signal: abort.signal },
    );
    for await (const event of stream) apply(event);
  } catch (error) {
    if (abort.signal.aborted) return;
    if (!job?.meditation) {
      complain(describe(error));
      return;
    }
  }
  if (!abort.signal.aborted) await follow(abort);
}

/** Reads the job's events after the last one seen until `completed`, resuming when a stream is cut. */
async function follow(abort: AbortController): Promise<void> {
  let delay = RESUME_FIRST_DELAY_MS;
  while (job && job.finalState === null && !abort.signal.aborted) {
    try {
      const stream = gateway.watchMeditation(
        { name: job.meditation, afterSequence: BigInt(job.lastSequence) },
        { signal: abort.signal },
      );
      for await (const event of stream) {
        apply(event);
        delay = RESUME_FIRST_DELAY_MS;
      }
    } catch (error) {
      if (abort.signal.aborted) return;
      if (error instanceof ConnectError && [Code.NotFound, Code.Unauthenticated, Code.PermissionDenied].includes(error.code)) {
        complain(describe(error));
        return;
      }
      say(`The connection was interrupted; resuming after event ${job.lastSequence}…`);
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, RESUME_MAX_DELAY_MS);
    }
  }
}

function apply(event: MeditationEvent): void {
  if (!job) return;
  const sequence = Number(event.sequence);
  // A replay never repeats what was shown.
  if (sequence <= job.lastSequence) return;
  job.lastSequence = sequence;
  job.lastElapsedSeconds = seconds(event.elapsed);
  restartClock();
  const body = event.event;
  switch (body.case) {
    case "accepted":
      job.meditation = body.value.meditation;
      ui.cancel.hidden = false;
      break;
    case "stage": {
      const change = body.value;
      let row = job.stages.find((candidate) => candidate.stage === change.stage);
      if (!row) {
        row = {
          stage: change.stage,
          state: change.state,
          startedAtSeconds: job.lastElapsedSeconds - seconds(change.stageElapsed),
          tookSeconds: null,
          detail: "",
          firstSequence: sequence,
        };
        job.stages.push(row);
      }
      row.state = change.state;
      row.detail = change.detail;
      if (change.state === StageState.STARTED) {
        row.startedAtSeconds = job.lastElapsedSeconds;
        row.tookSeconds = null;
      } else {
        row.tookSeconds = seconds(change.stageElapsed);
      }
      break;
    }
    case "playlistReady":
      job.preview = { uri: body.value.uri, subtitlesUri: "" };
      say("The live preview is ready.");
      break;
    case "narrationReady":
      job.subtitlesUri = body.value.subtitlesUri;
      break;
    case "videoReady": {
      const asset = { uri: body.value.uri, subtitlesUri: body.value.subtitlesUri };
      if (body.value.quality === VideoQuality.ENHANCED) job.enhanced = asset;
      else job.quick = asset;
      if (asset.subtitlesUri) job.subtitlesUri = asset.subtitlesUri;
      say(body.value.quality === VideoQuality.ENHANCED ? "The full-quality video is ready." : "The first video is ready.");
      break;
    }
    case "attemptFailed":
      say(`An attempt failed (${body.value.reason}); trying again.`);
      break;
    case "completed":
      job.finalState = body.value.state;
      stopClock();
      ui.cancel.hidden = true;
      say(FINAL_NAMES[body.value.state] ?? "The meditation ended.");
      // Its conversation can now be watched again from the list.
      void refreshConversations().catch(() => undefined);
      break;
    default:
      break;
  }
  saveJob(job);
  render();
  void updatePlayer();
}

function showJob(): void {
  ui.meditationSection.hidden = false;
  render();
}

function render(): void {
  if (!job) return;
  const rows = [...job.stages].sort((a, b) => a.firstSequence - b.firstSequence);
  const items = rows.map((row) => {
    const item = document.createElement("li");
    item.dataset.stage = Stage[row.stage];
    item.dataset.state = StageState[row.state];
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = STAGE_NAMES[row.stage] ?? Stage[row.stage];
    const state = document.createElement("span");
    state.className = "state";
    state.textContent = STATE_NAMES[row.state] ?? "";
    const time = document.createElement("span");
    time.className = "time";
    time.textContent =
      row.tookSeconds === null
        ? `started at ${formatSeconds(row.startedAtSeconds)}`
        : `${formatSeconds(row.tookSeconds)} (by ${formatSeconds(row.startedAtSeconds + row.tookSeconds)})`;
    item.append(name, state, time);
    if (row.detail) {
      const detail = document.createElement("span");
      detail.className = "detail help";
      detail.textContent = row.detail;
      item.append(detail);
    }
    return item;
  });
  ui.stages.replaceChildren(...items);
  // No empty black box before there is something to play (or when a job ends without any).
  ui.player.hidden = !(job.preview || job.quick || job.enhanced);
  ui.summary.textContent = summaryText();
  const finished = job.enhanced ?? job.quick;
  ui.download.hidden = !finished;
  if (finished) {
    ui.download.href = finished.uri;
    ui.download.textContent = job.enhanced ? "Download the video" : "Download the first video";
  }
  ui.cancel.hidden = !job.meditation || job.finalState !== null;
}

function summaryText(): string {
  if (!job) return "";
  if (job.finalState !== null) return `${FINAL_NAMES[job.finalState] ?? ""} Took ${formatSeconds(job.lastElapsedSeconds)}.`;
  const running = clockBase.elapsedSeconds + (clockBase.at ? (performance.now() - clockBase.at) / 1000 : 0);
  return `Working… ${Math.floor(running)} s`;
}

function restartClock(): void {
  if (!job) return;
  clockBase = { elapsedSeconds: job.lastElapsedSeconds, at: performance.now() };
  if (clock === undefined && job.finalState === null) {
    clock = window.setInterval(() => (ui.summary.textContent = summaryText()), 1000);
  }
}

function stopClock(): void {
  if (clock !== undefined) window.clearInterval(clock);
  clock = undefined;
}

async function updatePlayer(): Promise<void> {
  if (!job || job.meditation === cancelling) return;
  const current = player.currentQuality;
  if (job.subtitlesUri) player.setSubtitles(job.subtitlesUri);
  try {
    if (job.enhanced && current !== "enhanced") {
      await player.show(job.enhanced.uri, "enhanced", current === null ? job.positionSeconds : 0);
    } else if (job.quick && current !== "quick" && current !== "enhanced") {
      await player.show(job.quick.uri, "quick", current === null ? job.positionSeconds : 0);
    } else if (job.preview && current === null && job.finalState === null) {
      await player.show(job.preview.uri, "preview", job.positionSeconds);
    }
  } catch (error) {
    complain(`The video could not be played: ${describe(error)}`);
  }
}

// --- Start --------------------------------------------------------------------------------------------

ui.signInForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.apiKey.value.trim();
  if (key) void signIn(key);
});
ui.signOut.addEventListener("click", signOut);
ui.useSample.addEventListener("click", () => {
  ui.newTitle.value = sample.title;
  ui.newText.value = JSON.stringify(sample, null, 2);
  say("The sample conversation is filled in. Press Generate when you are ready.");
  ui.generate.focus();
});
ui.newForm.addEventListener("submit", (event) => {
  event.preventDefault();
  void createAndGenerate();
});
ui.cancel.addEventListener("click", () => {
  if (!job?.meditation) return;
  ui.cancel.disabled = true;
  // Stop playing it first: cancelling erases what the job made, and a player still reading its live
  // playlist would ask for files that are gone.
  const meditation = job.meditation;
  cancelling = meditation;
  player.reset();
  void gateway
    .cancelMeditation({ name: meditation })
    .then((response) => {
      if (response.meditation?.state !== MeditationState.CANCELLED) resumePlaying(meditation);
      else if (job && job.finalState === null) say("Cancelling…");
    })
    .catch((error: unknown) => {
      resumePlaying(meditation);
      complain(describe(error));
    })
    .finally(() => (ui.cancel.disabled = false));
});

/** The meditation was not cancelled after all (it had finished, or the request failed): what it made is
 * still there to play. */
function resumePlaying(meditation: string): void {
  if (cancelling !== meditation) return;
  cancelling = null;
  void updatePlayer();
}
ui.unmute.addEventListener("click", () => {
  player.unmute();
  ui.soundNote.hidden = true;
});

async function resume(): Promise<void> {
  if (!apiKey) {
    ui.apiKey.focus();
    return;
  }
  try {
    await refreshConversations();
  } catch (error) {
    complain(describe(error));
    signOut();
    return;
  }
  showSignedIn();
  const saved = loadJob();
  if (!saved?.meditation) return;
  job = saved;
  showJob();
  restartClock();
  if (job.finalState === null) {
    say(`Resuming your meditation after event ${job.lastSequence}…`);
  }
  await refreshAssetLinks();
  void updatePlayer();
  if (job.finalState === null) {
    const abort = (streamAbort = new AbortController());
    await follow(abort);
  } else {
    stopClock();
  }
}

/** Saved links may have expired: the meditation's videos come with fresh ones. */
async function refreshAssetLinks(): Promise<void> {
  if (!job) return;
  try {
    const { meditation } = await gateway.getMeditation({ name: job.meditation });
    if (!meditation) return;
    if (job.quick && meditation.quickVideoUri) job.quick.uri = meditation.quickVideoUri;
    if (job.enhanced && meditation.enhancedVideoUri) job.enhanced.uri = meditation.enhancedVideoUri;
    saveJob(job);
  } catch (error) {
    if (error instanceof ConnectError && error.code === Code.NotFound) forgetJob();
  }
}

void resume();
