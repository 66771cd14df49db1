/**
 * The smallest event emitter the client needs, the same in browsers and Node. Unlike
 * Node's EventEmitter it hands back what the listeners returned, so that the client
 * can wait for `message` listeners that return promises.
 */
export class Emitter {
  /** event name -> listeners, in the order they were added */
  #listeners = new Map();

  /** Adds a listener; returns this. */
  on(event, listener) {
    if (typeof listener !== "function") throw new TypeError("listener must be a function");
    const list = this.#listeners.get(event);
    if (list) list.push(listener);
    else this.#listeners.set(event, [listener]);
    return this;
  }

  /** Adds a listener that is removed after its first call; returns this. */
  once(event, listener) {
    if (typeof listener !== "function") throw new TypeError("listener must be a function");
    const wrapper = (...args) => {
      this.off(event, wrapper);
      return listener.apply(this, args);
    };
    wrapper.listener = listener;
    return this.on(event, wrapper);
  }

  /** Removes a listener (or, without one, all of the event's); returns this. */
  off(event, listener) {
    const list = this.#listeners.get(event);
    if (!list) return this;
    if (listener === undefined) {
      this.#listeners.delete(event);
      return this;
    }
    const i = list.findIndex((l) => l === listener || l.listener === listener);
    if (i !== -1) list.splice(i, 1);
    if (list.length === 0) this.#listeners.delete(event);
    return this;
  }

  /** The event's listeners, a copy. */
  listeners(event) {
    return [...(this.#listeners.get(event) ?? [])];
  }

  listenerCount(event) {
    return this.#listeners.get(event)?.length ?? 0;
  }
}
