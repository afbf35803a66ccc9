// Reconnect timing, as the Rust client does it (core/src/backoff.rs): full jitter, so
// the clients a restart dropped together do not all return in the same millisecond,
// and the close code's range decides whether to come back at all.

/**
 * A delay in `0..=min(max, min * 2^attempt)` milliseconds (attempt counts from 0).
 * @param {() => number} [random]
 */
export function backoffDelay(attempt, min, max, random = Math.random) {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 31));
  return Math.floor(random() * (ceiling + 1));
}

/**
 * What a close code asks of the client: `"stop"` (4000–4099: retrying will not help),
 * `"now"` (4200–4299) or `"backoff"` (4100–4199, the standard codes, no code at all).
 */
export function closeAdvice(code) {
  if (code >= 4000 && code <= 4099) return "stop";
  if (code >= 4200 && code <= 4299) return "now";
  return "backoff";
}
