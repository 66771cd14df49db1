import { isWhole } from "./options.js";

/**
 * The user's unread count as one connection knows it: herald's `inbox` state at
 * connect, then kept current from what the connection sees (new stored messages, read
 * positions from any device) without asking herald again.
 */
export class UnreadCounter {
  /** Whether `state` is an `inbox` payload: {unread, lastSeq, readUpTo}, whole numbers. */
  static valid(state) {
    return state != null && isWhole(state.unread) && isWhole(state.lastSeq) && isWhole(state.readUpTo);
  }

  constructor({ unread, lastSeq, readUpTo }) {
    this.unread = unread;
    this.lastSeq = lastSeq;
    this.readUpTo = readUpTo;
  }

  /** A stored message was handled. Returns whether the state changed (it was new). */
  stored(seq) {
    if (seq <= this.lastSeq) return false;
    if (seq > this.readUpTo) this.unread += 1;
    this.lastSeq = seq;
    return true;
  }

  /** A read position (never backwards). Returns whether the state changed. */
  read(upTo) {
    if (upTo <= this.readUpTo) return false;
    this.readUpTo = upTo;
    // The stored messages are a run of seqs ending at lastSeq (retention removes the
    // oldest), so at most lastSeq - readUpTo of them are unread, and no more than before.
    this.unread = Math.max(0, Math.min(this.unread, this.lastSeq - upTo));
    return true;
  }

  /** A copy for listeners. */
  state() {
    return { unread: this.unread, lastSeq: this.lastSeq, readUpTo: this.readUpTo };
  }
}
