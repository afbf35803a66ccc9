// Topic filters in MQTT syntax (docs/protocol.md, "Topics and filters"), matched
// locally because the server sends one `msg` per connection, not one per filter.

export function isWildcard(filter) {
  return filter.includes("+") || filter.includes("#");
}

/** Whether `filter` (may hold `+` and a final `#`) matches the concrete `topic`. */
export function matches(filter, topic) {
  if (filter === topic) return true;
  const f = filter.split("/");
  const t = topic.split("/");
  // System topics stay opt-in: a filter starting with a wildcard skips `$…`.
  if ((f[0] === "+" || f[0] === "#") && topic.startsWith("$")) return false;
  for (let i = 0; i < f.length; i++) {
    if (f[i] === "#") return true;
    if (i >= t.length || (f[i] !== "+" && f[i] !== t[i])) return false;
  }
  return f.length === t.length;
}
