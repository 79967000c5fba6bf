// The migration from toggle.ts to toggle_v2.ts (wire-api 7.8), uploaded with
// `smply migrations create --node toggle_migration.ts`.
const renamed: Record<string, string> = { inactive: "off", active: "on" };

export function upgradeState(path: string[], _context: unknown): string[] {
  return path.map((name) => renamed[name] ?? name);
}

export function upgradeContext(
  _oldPaths: string[][],
  _newPaths: string[][],
  context: { public: { toggleCount: number } },
): { public: { flips: number } } {
  return { public: { flips: context.public.toggleCount } };
}
