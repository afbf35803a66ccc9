// Errors a call can reject with. `code` is stable: the server's error codes
// (docs/protocol.md, "Error codes") and the SDK's own below.

/** The connection dropped before the reply came: the request may or may not have been applied. */
export const DISCONNECTED = "disconnected";
/** The client is closed (by `close()` or by a close code that forbids reconnecting). */
export const CLOSED = "closed";
/** No reply within `timeout`. */
export const TIMEOUT = "timeout";
/** The call's arguments are wrong before anything was sent (a topic that is not a string, data that is not JSON). */
export const INVALID_ARGUMENT = "invalid_argument";

export class SwitchboardError extends Error {
  /**
   * @param {string} code a server error code or one of the SDK's
   * @param {string} message for humans
   * @param {number | null} [closeCode] the WebSocket close code, for `closed`/`disconnected`
   */
  constructor(code, message, closeCode = null) {
    super(message);
    this.name = "SwitchboardError";
    this.code = code;
    this.closeCode = closeCode;
  }
}
