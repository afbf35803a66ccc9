// switchboard-client: the browser and Node client for switchboard's WebSocket
// protocol v1 (docs/protocol.md; guide in docs/sdk-js.md). No runtime dependencies.

export { Client } from "./client.js";
export { Subscription } from "./subscription.js";
export { SwitchboardError, CLOSED, DISCONNECTED, INVALID_ARGUMENT, TIMEOUT } from "./errors.js";
export { backoffDelay, closeAdvice } from "./backoff.js";
export { matches, isWildcard } from "./topic.js";
export const VERSION = "0.1.0";
