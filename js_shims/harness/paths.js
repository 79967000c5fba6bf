// harness/paths.js: state values as lists of leaf paths and back, the major-neutral form in which
// migrations see an instance (wire-api 7.8). A "description" is
//   { paths: string[][], history: { parent: string[], paths: string[][] }[], context }
// where `paths` are the leaf state paths (one per parallel region) and each history entry names the
// compound state that owns a history node and the paths it remembers.

const Paths = (() => {
  function leaves(value) {
    if (typeof value === "string") return [[value]];
    if (!value || typeof value !== "object") return [];
    const out = [];
    for (const key of Object.keys(value)) {
      const sub = value[key];
      const below = sub && (typeof sub === "string" || Object.keys(sub).length) ? leaves(sub) : [[]];
      for (const path of below) out.push([key].concat(path));
    }
    return out;
  }

  // The state value whose leaf paths are `paths`: a single atomic child becomes a string; several
  // children (parallel regions) become an object, atomic ones as {} (as XState writes them).
  function value(paths) {
    const root = new Map();
    for (const path of paths) {
      if (!Array.isArray(path) || !path.length || !path.every((k) => typeof k === "string" && k)) {
        throw new TypeError(`a state path must be a non-empty array of state names, got ${JSON.stringify(path)}`);
      }
      let node = root;
      for (const key of path) {
        if (!node.has(key)) node.set(key, new Map());
        node = node.get(key);
      }
    }
    const build = (node) => {
      if (node.size === 1) {
        const [[key, sub]] = node;
        return sub.size ? { [key]: build(sub) } : key;
      }
      const out = {};
      for (const [key, sub] of node) out[key] = sub.size ? build(sub) : {};
      return out;
    };
    if (!root.size) throw new TypeError("a state needs at least one state path");
    return build(root);
  }

  function startsWith(path, prefix) {
    return prefix.length <= path.length && prefix.every((k, i) => path[i] === k);
  }

  // The deepest state on every path (a proper prefix of all of them) that `hasHistory` accepts:
  // where remembered paths belong in the new machine.
  function owner(paths, hasHistory) {
    const shortest = Math.min(...paths.map((p) => p.length));
    for (let depth = shortest - 1; depth >= 0; depth -= 1) {
      const prefix = paths[0].slice(0, depth);
      if (paths.every((p) => startsWith(p, prefix)) && hasHistory(prefix)) return prefix;
    }
    return null;
  }

  // The machine may complete a migrated state (a compound state's initial child); anything else it
  // changed means the paths do not describe one of its states.
  function checkResolved(requested, resolved) {
    const covered = resolved.every((leaf) => requested.some((p) => startsWith(leaf, p)));
    const kept = requested.every((p) => resolved.some((leaf) => startsWith(leaf, p)));
    if (!covered || !kept) {
      throw new TypeError(`the migrated state paths ${JSON.stringify(requested)} are not a state of the new version (it resolves them to ${JSON.stringify(resolved)})`);
    }
  }

  function checkDescription(d, what) {
    if (!d || typeof d !== "object" || !Array.isArray(d.paths)) throw new TypeError(`${what}: no state paths`);
    return d;
  }

  return { leaves, value, startsWith, owner, checkResolved, checkDescription };
})();
