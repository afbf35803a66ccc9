// One local subscription: listeners (`message`, `gap`, `error`, `end`) and an async
// iterator. Several local subscriptions to the same filter share one server
// subscription; the client routes every `msg` to each whose filter matches.

import { Emitter } from "./emitter.js";
import { CLOSED, SwitchboardError } from "./errors.js";

export class Subscription extends Emitter {
  #release;
  #queue = null;
  #waiters = [];
  #limit;
  #settle;
  #fail;
  /** Messages the async iterator dropped because nobody read them (oldest first). */
  dropped = 0;

  /**
   * @param {string} filter
   * @param {{ buffer?: number, onMessage?: (m: object) => void }} options
   * @param {(sub: Subscription) => Promise<void>} release
   */
  constructor(filter, options, release) {
    super();
    this.filter = filter;
    /** "pending" until the server's `ok`, then "active"; "ended" after unsubscribe, an error or close. */
    this.state = "pending";
    this.#release = release;
    this.#limit = options.buffer ?? 1024;
    if (options.onMessage) this.on("message", options.onMessage);
    /** Settles with the server's first answer: `{ epoch, seq, recovered, history }` or an error. */
    this.ready = new Promise((resolve, reject) => {
      this.#settle = resolve;
      this.#fail = reject;
    });
    // A caller that never awaits `ready` must not crash Node with an unhandled
    // rejection; the `error` event still reports it.
    this.ready.catch(() => {});
  }

  /** Stops delivery; resolves once the server dropped the subscription (if it was the last on this filter). */
  unsubscribe() {
    if (this.state === "ended") return Promise.resolve();
    this._end(null);
    return this.#release(this);
  }

  [Symbol.asyncIterator]() {
    this.#queue ??= [];
    return {
      next: () => {
        if (this.#queue.length > 0) return Promise.resolve({ value: this.#queue.shift(), done: false });
        if (this.state === "ended") return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => this.#waiters.push(resolve));
      },
      // `break` out of a `for await` loop unsubscribes.
      return: async () => {
        await this.unsubscribe();
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  // The methods below are the client's; applications do not call them.

  _confirmed(result) {
    if (this.state === "pending") this.state = "active";
    this.#settle(result);
  }

  _deliver(msg) {
    this.emit("message", msg);
    const queue = this.#queue;
    if (queue === null) return;
    const waiter = this.#waiters.shift();
    if (waiter) return waiter({ value: msg, done: false });
    queue.push(msg);
    if (queue.length > this.#limit) {
      queue.shift();
      this.dropped++;
    }
  }

  _gap(info) {
    this.emit("gap", info);
  }

  /** Ends delivery; `error` (a SwitchboardError) says why when it was not asked for. */
  _end(error) {
    if (this.state === "ended") return;
    this.state = "ended";
    if (error) {
      this.#fail(error);
      this.emit("error", error);
    } else {
      this.#fail(new SwitchboardError(CLOSED, "unsubscribed before the server answered"));
    }
    this.emit("end", error);
    for (const waiter of this.#waiters.splice(0)) waiter({ value: undefined, done: true });
  }
}
