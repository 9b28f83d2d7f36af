// vaelab explorer: one helper shared by app.js and translate.js (ES module, no build step).

// Runs `fn(arg)` with at most one call in flight; while one runs, only the latest argument is
// kept. A slider dragged fast thus never queues stale decodes behind the current one. An error
// goes to `status(message, true)`.
export function latestWins(fn, status) {
  let running = false;
  let pending = null;
  return (arg) => {
    pending = {arg};
    if (running) return;
    running = true;
    (async () => {
      while (pending) {
        const {arg: next} = pending;
        pending = null;
        try { await fn(next); } catch (err) { status(err.message, true); }
      }
      running = false;
    })();
  };
}
