// Where the client stands in each history topic's stream (docs/protocol.md, "History
// and resume"), so a reconnect asks for exactly what it missed and drops what it has.
// The Rust client's clients/rust/src/resume.rs, rule for rule.

export class Positions {
  /** filter -> { epoch, seq } ; seq is null right after an epoch change (every number is new). */
  #streams = new Map();

  /** The `since`/`epoch` fields for re-subscribing `filter`, if it has a position. */
  since(filter) {
    const p = this.#streams.get(filter);
    return p && p.seq !== null ? { since: p.seq, epoch: p.epoch } : null;
  }

  /**
   * Takes the position from a `sub` reply; `asked` is whether the `sub` carried
   * `since` or `last`. Returns true when the server could not deliver everything asked.
   */
  subscribed(filter, reply, asked) {
    if (typeof reply.epoch !== "string") return false;
    const p = this.#streams.get(filter);
    if (p && asked) {
      // A resume: the recovered messages follow the reply and advance the position.
      if (p.epoch !== reply.epoch) {
        p.epoch = reply.epoch;
        p.seq = null;
      }
    } else {
      // A first subscription: numbers after the reply's are live; with `last` or
      // `since` the recovered ones come first, so every number is new.
      const seq = asked || typeof reply.seq !== "number" ? null : reply.seq;
      this.#streams.set(filter, { epoch: reply.epoch, seq });
    }
    return reply.recovered === false;
  }

  /** False for a message already delivered (drop it); advances the position otherwise. */
  admit(msg) {
    if (msg.retained) return true;
    const p = this.#streams.get(msg.topic);
    if (!p) return true;
    if (p.seq !== null && msg.seq <= p.seq) return false;
    p.seq = msg.seq;
    return true;
  }

  forget(filter) {
    this.#streams.delete(filter);
  }
}
