// Samples the JS heaps of a page and of its dedicated workers through the DevTools protocol.
// Workers have their own V8 isolate, which `performance.memory` does not see, so this attaches
// to each worker target (Target.setAutoAttach on the page's session) and asks every isolate for
// Runtime.getHeapUsage: `usedSize` is the V8 heap, `backingStorageSize` the ArrayBuffers (fetched
// chunks, copies of model bytes) that live outside it. The wasm linear memory is not part of
// either; callers add it from the engine's own count.

const REPLY_TIMEOUT_MS = 2000;

export async function startMemorySampler(context, page, intervalMs = 100) {
  const cdp = await context.newCDPSession(page);
  const workers = new Map(); // sessionId -> url
  const pending = new Map();
  let nextId = 1;

  cdp.on('Target.attachedToTarget', (e) => {
    if (e.targetInfo.type === 'worker') workers.set(e.sessionId, e.targetInfo.url);
  });
  cdp.on('Target.detachedFromTarget', (e) => workers.delete(e.sessionId));
  cdp.on('Target.receivedMessageFromTarget', (e) => {
    const message = JSON.parse(e.message);
    const resolve = pending.get(message.id);
    if (resolve) {
      pending.delete(message.id);
      resolve(message.result ?? null);
    }
  });
  // Non-flattened sessions: the replies come back as events on this session, which keeps this
  // sampler independent of the sessions Playwright itself holds on the same targets.
  await cdp.send('Target.setAutoAttach', { autoAttach: true, waitForDebuggerOnStart: false, flatten: false });

  const ask = (sessionId, method) =>
    new Promise((resolve) => {
      const id = nextId++;
      pending.set(id, resolve);
      cdp.send('Target.sendMessageToTarget', { sessionId, message: JSON.stringify({ id, method }) }).catch(() => resolve(null));
      setTimeout(() => {
        if (pending.delete(id)) resolve(null);
      }, REPLY_TIMEOUT_MS);
    });

  const heap = (u) => (u ? u.usedSize + (u.backingStorageSize ?? 0) : 0);
  const peak = { total: 0, page: 0, pageUsed: 0, worker: 0, workerUsed: 0, workerBacking: 0 };
  let samples = 0;
  let workerSamples = 0;
  let stopped = false;
  const t0 = performance.now();
  let peakAt = null; // the sample with the largest total

  const sampleOnce = async () => {
    const [pageUsage, ...workerUsage] = await Promise.all([
      cdp.send('Runtime.getHeapUsage').catch(() => null),
      ...[...workers.keys()].map((sid) => ask(sid, 'Runtime.getHeapUsage')),
    ]);
    const answered = workerUsage.filter(Boolean);
    const pageBytes = heap(pageUsage);
    const workerBytes = answered.reduce((n, u) => n + heap(u), 0);
    samples++;
    if (answered.length) workerSamples++;
    if (pageBytes + workerBytes > peak.total) {
      peak.total = pageBytes + workerBytes;
      peakAt = { ms: performance.now() - t0, page: pageBytes, worker: workerBytes };
    }
    peak.page = Math.max(peak.page, pageBytes);
    peak.pageUsed = Math.max(peak.pageUsed, pageUsage?.usedSize ?? 0);
    peak.worker = Math.max(peak.worker, workerBytes);
    peak.workerUsed = Math.max(peak.workerUsed, answered.reduce((n, u) => n + u.usedSize, 0));
    peak.workerBacking = Math.max(peak.workerBacking, answered.reduce((n, u) => n + (u.backingStorageSize ?? 0), 0));
  };

  const loop = (async () => {
    while (!stopped) {
      const t0 = Date.now();
      await sampleOnce();
      await new Promise((r) => setTimeout(r, Math.max(0, intervalMs - (Date.now() - t0))));
    }
  })();

  return {
    /**
     * Takes a last sample and returns the peaks (bytes), when the largest total was seen (ms
     * after the start) and how many samples saw a worker.
     */
    async stop() {
      stopped = true;
      await loop;
      await sampleOnce();
      await cdp.detach().catch(() => {});
      return { peak, peakAt, samples, workerSamples, workers: workers.size };
    },
  };
}
