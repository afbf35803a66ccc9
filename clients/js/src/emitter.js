// A minimal event emitter: `on` returns the function that removes the listener.
// Hand-rolled rather than EventTarget because a message handler should receive the
// message itself, and a CustomEvent per message costs an allocation on the hot path.

export class Emitter {
  #handlers = new Map();

  on(type, listener) {
    let set = this.#handlers.get(type);
    if (!set) this.#handlers.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  once(type, listener) {
    const off = this.on(type, (value) => {
      off();
      listener(value);
    });
    return off;
  }

  off(type, listener) {
    this.#handlers.get(type)?.delete(listener);
  }

  /** Whether anyone listens; a listener that throws does not stop the others. */
  emit(type, value) {
    const set = this.#handlers.get(type);
    if (!set || set.size === 0) return false;
    for (const listener of set) {
      try {
        listener(value);
      } catch (error) {
        // The application's bug, not ours: surface it where uncaught errors go,
        // without breaking the connection's read loop.
        queueMicrotask(() => {
          throw error;
        });
      }
    }
    return true;
  }
}
