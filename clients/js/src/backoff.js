/**
 * Delay before reconnect attempt `attempt` (0 for the first): exponential from `minMs`,
 * capped at `maxMs`, with jitter (a random point in the upper half), so that clients
 * refused together do not come back together.
 */
export function backoffDelay(attempt, minMs, maxMs, random = Math.random) {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}
