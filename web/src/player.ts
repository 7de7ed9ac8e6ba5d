// Two stacked <video> elements: one plays, the other prepares the next delivery (preview → QUICK →
// ENHANCED) at the current position, and they swap only when the new one can play from there — no jump, no
// silence. Subtitles come from a WebVTT <track>, on by default.

export type Quality = "preview" | "quick" | "enhanced";

const RANK: Record<Quality, number> = { preview: 0, quick: 1, enhanced: 2 };
// The new delivery is prepared this far ahead of the playing one, which then catches up to it: the handover
// happens at one position, whatever the seek cost. Doubled while the playing one overtakes it.
const FIRST_LEAD_SECONDS = 0.4;
const HANDOVER_ATTEMPTS = 4;
const POLL_MS = 10;
// A live playlist opened at the wrong moment can stall before its first frame: open it again this often
// until it plays or a finished video replaces it.
const PREVIEW_RETRY_MS = 2000;

export class Player {
  private active: HTMLVideoElement;
  private standby: HTMLVideoElement;
  private quality: Quality | null = null;
  private subtitlesUri = "";
  private switching: Promise<void> = Promise.resolve();
  private wanted: Quality | null = null;
  // Whether the person paused the player (then a new delivery waits paused too); the player's own pauses
  // while switching do not count.
  private pausedByPerson = false;
  private handingOver = false;
  // The video a load is under way in (loadWithin), whose position is not yet the person's.
  private loading: HTMLVideoElement | null = null;
  onSoundBlocked: () => void = () => {};
  onPosition: (seconds: number) => void = () => {};

  constructor(first: HTMLVideoElement, second: HTMLVideoElement) {
    this.active = first;
    this.standby = second;
    for (const video of [first, second]) {
      video.addEventListener("timeupdate", () => {
        // A video being loaded reports 0 (its load resets the position) before it seeks to where the person
        // was: that is not where they are, and saving it would send a later delivery back to the start.
        if (video === this.active && video !== this.loading) this.onPosition(video.currentTime);
      });
      video.addEventListener("pause", () => {
        // A pause that comes with an error or the end is the player's, not the person's.
        if (video === this.active && !this.handingOver && !video.ended && !video.error) this.pausedByPerson = true;
      });
      video.addEventListener("play", () => {
        if (video === this.active) this.pausedByPerson = false;
      });
      video.addEventListener("error", () => {
        if (video === this.active && this.quality === "preview") this.reopenPreview(video);
      });
    }
  }

  get currentQuality(): Quality | null {
    return this.quality;
  }

  /** Plays `uri` (a better delivery than the current one), continuing from where the current one is. */
  show(uri: string, quality: Quality, startAtSeconds = 0): Promise<void> {
    // Only ever forward: a delivery already asked for (or a lesser one) changes nothing.
    if (this.wanted !== null && RANK[quality] <= RANK[this.wanted]) return this.switching.catch(() => undefined);
    this.wanted = quality;
    // One switch at a time, in order; a failed one does not hold back the next.
    const next = this.switching.catch(() => undefined).then(() => this.switchTo(uri, quality, startAtSeconds));
    this.switching = next;
    return next;
  }

  /** Adds the subtitles to what plays now and to every later delivery. */
  setSubtitles(uri: string): void {
    if (!uri || uri === this.subtitlesUri) return;
    this.subtitlesUri = uri;
    if (this.quality !== null) attachTrack(this.active, uri);
  }

  reset(): void {
    for (const video of [this.active, this.standby]) {
      video.pause();
      video.removeAttribute("src");
      video.querySelectorAll("track").forEach((track) => track.remove());
      video.load();
    }
    this.quality = null;
    this.wanted = null;
    this.subtitlesUri = "";
  }

  private async switchTo(uri: string, quality: Quality, startAtSeconds: number): Promise<void> {
    if (this.quality === null) {
      if (quality === "preview") await this.loadPreview(this.active, uri, startAtSeconds);
      else await this.load(this.active, uri, startAtSeconds);
      this.quality = quality;
      this.active.dataset.quality = quality;
      if (!this.pausedByPerson) await this.start(this.active);
      return;
    }
    const current = this.active;
    const next = this.standby;
    // A preview that never got going is replaced from where the narration would be: its start.
    const hasPlayed = current.readyState >= HTMLMediaElement.HAVE_CURRENT_DATA;
    await this.load(next, uri, hasPlayed ? current.currentTime : 0);
    if (hasPlayed) await meet(current, next);
    next.volume = current.volume;
    next.muted = current.muted;
    this.handingOver = true;
    try {
      if (!this.pausedByPerson) await this.start(next);
      current.pause();
    } finally {
      this.handingOver = false;
    }
    current.classList.remove("active");
    current.setAttribute("aria-hidden", "true");
    current.tabIndex = -1;
    next.classList.add("active");
    next.removeAttribute("aria-hidden");
    next.removeAttribute("tabindex");
    next.dataset.quality = quality;
    delete current.dataset.quality;
    if (document.activeElement === current) next.focus();
    this.active = next;
    this.standby = current;
    this.quality = quality;
    // Free the old delivery's connection (a live playlist keeps polling otherwise).
    current.removeAttribute("src");
    current.querySelectorAll("track").forEach((track) => track.remove());
    current.load();
  }

  /** A live preview that broke (a segment it could not read) is opened again where it was, while no finished
   * video has come to replace it. */
  private reopenPreview(video: HTMLVideoElement): void {
    const uri = video.currentSrc;
    const position = video.currentTime;
    this.switching = this.switching
      .catch(() => undefined)
      .then(() => new Promise((resolve) => window.setTimeout(resolve, PREVIEW_RETRY_MS / 4)))
      .then(async () => {
        if (video !== this.active || this.wanted !== "preview" || !uri) return;
        await this.loadPreview(video, uri, position);
        if (!this.pausedByPerson) await this.start(video);
      });
  }

  /** Opens the live playlist, again and again while it stalls, until it can play or is no longer wanted. */
  private async loadPreview(video: HTMLVideoElement, uri: string, atSeconds: number): Promise<void> {
    for (;;) {
      try {
        await this.loadWithin(video, uri, atSeconds, PREVIEW_RETRY_MS);
        return;
      } catch (error) {
        if (this.wanted !== "preview") throw error;
      }
    }
  }

  private async load(video: HTMLVideoElement, uri: string, atSeconds: number): Promise<void> {
    await this.loadWithin(video, uri, atSeconds, LOAD_TIMEOUT_MS);
  }

  private async loadWithin(
    video: HTMLVideoElement,
    uri: string,
    atSeconds: number,
    timeoutMs: number,
  ): Promise<void> {
    this.loading = video;
    try {
      video.removeAttribute("src");
      video.load();
      video.querySelectorAll("track").forEach((track) => track.remove());
      if (this.subtitlesUri) attachTrack(video, this.subtitlesUri);
      video.src = uri;
      await once(video, "loadedmetadata", timeoutMs);
      if (atSeconds > 0) await seek(video, atSeconds);
      if (video.readyState < HTMLMediaElement.HAVE_FUTURE_DATA) await once(video, "canplay", timeoutMs);
    } finally {
      if (this.loading === video) this.loading = null;
    }
  }

  private async start(video: HTMLVideoElement): Promise<void> {
    try {
      await video.play();
    } catch (error) {
      if (!(error instanceof DOMException) || error.name !== "NotAllowedError") throw error;
      // No sound without a gesture (a reload): play muted and offer the sound.
      video.muted = true;
      await video.play();
      this.onSoundBlocked();
    }
  }

  unmute(): void {
    this.active.muted = false;
    this.standby.muted = false;
  }
}

/** Places `next` a little ahead of `current` and waits for `current` to reach it: then both are at one
 * position, and the handover neither jumps nor repeats. */
async function meet(current: HTMLVideoElement, next: HTMLVideoElement): Promise<void> {
  let lead = FIRST_LEAD_SECONDS;
  for (let attempt = 0; attempt < HANDOVER_ATTEMPTS; attempt += 1) {
    const playing = !current.paused && !current.ended;
    await seek(next, current.currentTime + (playing ? lead : 0));
    if (!playing) {
      await seek(next, current.currentTime);
      return;
    }
    const meeting = next.currentTime;
    if (current.currentTime <= meeting) {
      const deadline = performance.now() + (lead + 1) * 1000;
      while (current.currentTime < meeting && !current.paused && performance.now() < deadline) {
        await new Promise((resolve) => window.setTimeout(resolve, POLL_MS));
      }
      return;
    }
    lead *= 2;
  }
}

function attachTrack(video: HTMLVideoElement, uri: string): void {
  const track = document.createElement("track");
  track.kind = "subtitles";
  track.srclang = "en";
  track.label = "English";
  track.default = true;
  track.src = uri;
  video.append(track);
  track.track.mode = "showing";
}

// A seek to a place the player cannot reach (outside a live playlist's window) never reports: go on from
// wherever it is after this long rather than hold every later delivery back.
const SEEK_TIMEOUT_MS = 3000;
const LOAD_TIMEOUT_MS = 20000;

function seek(video: HTMLVideoElement, seconds: number): Promise<void> {
  const target = Number.isFinite(video.duration) ? Math.min(seconds, Math.max(0, video.duration - 0.1)) : seconds;
  const done = once(video, "seeked", SEEK_TIMEOUT_MS).catch(() => undefined);
  video.currentTime = target;
  return done;
}

function once(video: HTMLVideoElement, event: string, timeoutMs = LOAD_TIMEOUT_MS): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = window.setTimeout(() => {
      cleanup();
      reject(new Error(`the video did not get to "${event}" in time`));
    }, timeoutMs);
    const onEvent = () => {
      cleanup();
      resolve();
    };
    const onError = () => {
      cleanup();
      reject(new Error(`the video could not be loaded (${video.error?.message || "media error"})`));
    };
    const cleanup = () => {
      window.clearTimeout(timer);
      video.removeEventListener(event, onEvent);
      video.removeEventListener("error", onError);
    };
    video.addEventListener(event, onEvent);
    video.addEventListener("error", onError);
  });
}
