// Installed by the test before the page's own scripts (an init script): it only watches. Every 50 ms it
// samples the visible player and the stage rows, so the test can tell how the player moved from one delivery
// to the next (the position kept, no pause) and in what order the rows appeared.
(() => {
  const record = { samples: 0, switches: [], stageLists: [], lastStages: "", mediaEvents: [] };
  window.__observer = record;
  // What each player element went through, for the test's report when the story breaks.
  const MEDIA_EVENTS = ["loadstart", "loadedmetadata", "canplay", "play", "playing", "pause", "waiting",
    "stalled", "error", "emptied", "seeking", "seeked", "ended"];
  for (const name of MEDIA_EVENTS) {
    document.addEventListener(name, (event) => {
      const video = event.target;
      if (!(video instanceof HTMLVideoElement) || record.mediaEvents.length > 400) return;
      record.mediaEvents.push([Math.round(performance.now()), video.id, name, video.readyState,
        Number(video.currentTime.toFixed(2)), (video.currentSrc || "").split("/").pop()]);
    }, true);
  }
  let previous = null;
  setInterval(() => {
    record.samples += 1;
    const video = document.querySelector("video.active");
    const now = performance.now() / 1000;
    if (video && video.dataset.quality) {
      const sample = { quality: video.dataset.quality, time: video.currentTime, paused: video.paused, at: now };
      if (previous && previous.quality !== sample.quality) {
        record.switches.push({
          from: previous.quality,
          to: sample.quality,
          fromTime: previous.time,
          fromPaused: previous.paused,
          toTime: sample.time,
          toPaused: sample.paused,
          wallSeconds: now - previous.at,
        });
      }
      previous = sample;
    }
    const stages = [...document.querySelectorAll("#stages li")].map((row) => row.dataset.stage).join(",");
    if (stages !== record.lastStages) {
      record.lastStages = stages;
      record.stageLists.push(stages ? stages.split(",") : []);
    }
  }, 50);
})();
