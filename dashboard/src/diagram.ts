// The statechart: a version's structure (GET /machines/{m}/v/{v}/structure) laid out by ELK's
// layered algorithm (states nested in their parents, transitions as labelled edges) and drawn as
// SVG. Pan with drag or arrow keys, zoom with the wheel, +/- or the buttons; 0 fits the view.
// Loaded only on the instance and machine pages (its own chunk: elkjs is large).

import ELK from "elkjs/lib/elk.bundled.js";
import { h, s } from "./dom";

export interface StructureTransition {
  event: string;
  kind: string;
  targets: string[];
  guard?: string;
  delay?: number | string;
  reenter: boolean;
  actions: string[];
}

export interface StructureNode {
  id: string;
  key: string;
  path: string[];
  type: "atomic" | "compound" | "parallel" | "final" | "history";
  initial?: string;
  history?: "shallow" | "deep";
  historyTarget?: string;
  tags: string[];
  description?: string;
  entry: string[];
  exit: string[];
  invoke: { id: string; src: string }[];
  transitions: StructureTransition[];
  states: StructureNode[];
}

export interface Structure {
  major: 4 | 5;
  id: string;
  root: StructureNode;
}

export interface Diagram {
  element: HTMLElement;
  highlight(state: unknown): void;
}

interface ElkNode {
  id: string;
  width?: number;
  height?: number;
  x?: number;
  y?: number;
  children?: ElkNode[];
  edges?: ElkEdge[];
  labels?: { text: string; width: number; height: number; x?: number; y?: number }[];
  layoutOptions?: Record<string, string>;
}
interface ElkEdge {
  id: string;
  sources: string[];
  targets: string[];
  labels?: { text: string; width: number; height: number; x?: number; y?: number }[];
  sections?: { startPoint: { x: number; y: number }; endPoint: { x: number; y: number }; bendPoints?: { x: number; y: number }[] }[];
}

const FONT = "12px system-ui, -apple-system, 'Segoe UI', sans-serif";
const TITLE_H = 26;
const ROW_H = 16;
let measurer: CanvasRenderingContext2D | null = null;
function textWidth(text: string, bold = false): number {
  measurer ??= document.createElement("canvas").getContext("2d");
  if (!measurer) return text.length * 7;
  measurer.font = bold ? `600 ${FONT}` : FONT;
  return Math.ceil(measurer.measureText(text).width);
}

export function transitionLabel(t: StructureTransition, invokeIds: string[] = []): string {
  let label: string;
  switch (t.kind) {
    case "after":
      label = typeof t.delay === "number" ? `after ${t.delay} ms` : `after ${t.delay ?? "?"}`;
      break;
    case "always":
      label = "always";
      break;
    case "done":
      label = "done";
      break;
    case "invoke-done":
    case "invoke-error":
    case "invoke-snapshot": {
      const id = invokeIds.find((i) => t.event.includes(i)) ?? "";
      label = `${t.kind.replace("invoke-", "")}${id ? `: ${id}` : ""}`;
      break;
    }
    default:
      label = t.event;
  }
  return t.guard ? `${label} [${t.guard}]` : label;
}

/** Lines shown inside a state: actions, invokes, and transitions that go nowhere or to itself. */
function rows(node: StructureNode, drawn: Set<StructureTransition>): string[] {
  const out: string[] = [];
  if (node.entry.length) out.push(`entry / ${node.entry.join(", ")}`);
  if (node.exit.length) out.push(`exit / ${node.exit.join(", ")}`);
  for (const inv of node.invoke) out.push(`invoke ${inv.src}${inv.id !== inv.src ? ` (${inv.id})` : ""}`);
  for (const t of node.transitions) {
    if (drawn.has(t)) continue;
    const self = t.targets.length === 1 && t.targets[0] === node.id;
    const label = transitionLabel(t, node.invoke.map((i) => i.id));
    out.push(`${self ? "↻" : "•"} ${label}${t.actions.length ? ` / ${t.actions.join(", ")}` : ""}`);
  }
  if (node.tags.length) out.push(`tags: ${node.tags.join(", ")}`);
  return out;
}

function title(node: StructureNode): string {
  if (node.type === "history") return node.history === "deep" ? "H*" : "H";
  return node.key;
}

function buildGraph(structure: Structure, withEdges: boolean) {
  const all = new Map<string, StructureNode>();
  const walk = (n: StructureNode) => {
    all.set(n.id, n);
    n.states.forEach(walk);
  };
  walk(structure.root);
  const drawn = new Set<StructureTransition>();
  const edges: ElkEdge[] = [];
  const labels = new Map<string, string>();
  if (withEdges) {
    for (const n of all.values()) {
      for (const t of n.transitions) {
        const targets = t.targets.filter((id) => id !== n.id && all.has(id));
        if (!targets.length || targets.length !== t.targets.length) continue;
        drawn.add(t);
        const text = transitionLabel(t, n.invoke.map((i) => i.id));
        for (const target of targets) {
          const id = `e${edges.length}`;
          labels.set(id, t.kind);
          edges.push({ id, sources: [n.id], targets: [target], labels: [{ text, width: textWidth(text) + 6, height: 14 }] });
        }
      }
    }
  }
  const rowsOf = new Map<string, string[]>();
  const toElk = (n: StructureNode, isRoot: boolean): ElkNode => {
    const r = rows(n, drawn);
    rowsOf.set(n.id, r);
    const widest = Math.max(textWidth(title(n), true), ...r.map((x) => textWidth(x)));
    if (n.type === "history") return { id: n.id, width: 30, height: 30 };
    if (!n.states.length) return { id: n.id, width: Math.max(widest + 24, 70), height: TITLE_H + r.length * ROW_H + 8 };
    const children = n.states.map((c) => toElk(c, false));
    if (n.initial) {
      const child = n.states.find((c) => c.key === n.initial);
      if (child) {
        children.unshift({ id: `${n.id}\u0000init`, width: 12, height: 12 });
        edges.push({ id: `i${edges.length}`, sources: [`${n.id}\u0000init`], targets: [child.id] });
      }
    }
    const top = TITLE_H + r.length * ROW_H + 10;
    return {
      id: n.id,
      children,
      layoutOptions: {
        "elk.padding": `[top=${top},left=14,bottom=14,right=14]`,
        "elk.nodeSize.minimum": `(${widest + 28}, ${top + 20})`,
        "elk.nodeSize.constraints": "MINIMUM_SIZE",
        "elk.direction": n.type === "parallel" ? "DOWN" : "RIGHT",
        ...(isRoot ? {} : {}),
      },
    };
  };
  const graph: ElkNode = {
    id: "\u0000root",
    layoutOptions: {
      "elk.algorithm": "layered",
      "elk.hierarchyHandling": "INCLUDE_CHILDREN",
      "elk.direction": "RIGHT",
      "elk.json.edgeCoords": "ROOT",
      "elk.json.shapeCoords": "ROOT",
      "elk.edgeRouting": "SPLINES",
      "elk.layered.spacing.nodeNodeBetweenLayers": "50",
      "elk.spacing.nodeNode": "28",
      "elk.spacing.edgeLabel": "4",
      "elk.edgeLabels.placement": "CENTER",
      "elk.padding": "[top=10,left=10,bottom=10,right=10]",
    },
    children: [toElk(structure.root, true)],
    edges,
  };
  return { graph, all, rowsOf, kinds: labels };
}

export async function drawDiagram(structure: Structure): Promise<Diagram> {
  const elk = new ELK();
  let built = buildGraph(structure, true);
  let laid: ElkNode;
  let warning = "";
  try {
    laid = (await elk.layout(built.graph as any)) as ElkNode;
  } catch (err) {
    // A shape ELK cannot route (rare): draw the states and list every transition inside them.
    warning = `transitions are listed inside the states: the layout failed (${err instanceof Error ? err.message : err})`;
    built = buildGraph(structure, false);
    laid = (await elk.layout(built.graph as any)) as ElkNode;
  }
  const { all, rowsOf, kinds } = built;
  const width = laid.width ?? 100;
  const height = laid.height ?? 100;
  const content = s("g", { class: "content" });
  const svg = s(
    "svg",
    { class: "chart", role: "img", "aria-label": `Statechart of ${structure.id}`, viewBox: `0 0 ${width} ${height}`, width: Math.ceil(width * 1.3) },
    s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" }, s("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }))),
    content,
  );
  const groups = new Map<string, SVGElement>();
  const drawNode = (n: ElkNode, parent: StructureNode | null) => {
    const state = all.get(n.id);
    const x = n.x ?? 0;
    const y = n.y ?? 0;
    const w = n.width ?? 0;
    const hh = n.height ?? 0;
    if (!state) {
      content.appendChild(s("circle", { cx: x + w / 2, cy: y + hh / 2, r: 5, class: "initial-dot" }));
      return;
    }
    const g = s("g", {
      class: `state type-${state.type}${parent?.type === "parallel" ? " region" : ""}${state === structure.root ? " root" : ""}`,
      "data-state-id": state.id,
      "data-path": state.path.join("."),
    });
    if (state.type === "history") {
      g.appendChild(s("circle", { cx: x + w / 2, cy: y + hh / 2, r: Math.min(w, hh) / 2, class: "box" }));
      g.appendChild(s("text", { x: x + w / 2, y: y + hh / 2 + 4, "text-anchor": "middle", class: "title" }, title(state)));
    } else {
      g.appendChild(s("rect", { x, y, width: w, height: hh, rx: 8, class: "box" }));
      if (state.type === "final") g.appendChild(s("rect", { x: x + 3, y: y + 3, width: w - 6, height: hh - 6, rx: 6, class: "inner" }));
      g.appendChild(s("text", { x: x + 10, y: y + 17, class: "title" }, state === structure.root ? `${state.key} (XState ${structure.major})` : state.key));
      (rowsOf.get(state.id) ?? []).forEach((row, i) => g.appendChild(s("text", { x: x + 10, y: y + TITLE_H + 8 + i * ROW_H, class: "row" }, row)));
    }
    if (state.description) g.appendChild(s("title", {}, state.description));
    content.appendChild(g);
    groups.set(state.id, g);
    for (const child of n.children ?? []) drawNode(child, state);
  };
  for (const child of laid.children ?? []) drawNode(child, null);
  for (const e of laid.edges ?? []) {
    for (const section of e.sections ?? []) {
      const pts = [section.startPoint, ...(section.bendPoints ?? []), section.endPoint];
      const d = `M ${pts.map((p) => `${p.x} ${p.y}`).join(" L ")}`;
      content.appendChild(s("path", { d, class: `edge kind-${kinds.get(e.id) ?? "initial"}`, "marker-end": "url(#arrow)" }));
    }
    for (const label of e.labels ?? []) {
      content.appendChild(s("text", { x: (label.x ?? 0) + 3, y: (label.y ?? 0) + 11, class: "edge-label" }, label.text));
    }
  }

  // pan and zoom
  const view = { x: 0, y: 0, scale: 1 };
  const apply = () => content.setAttribute("transform", `translate(${view.x} ${view.y}) scale(${view.scale})`);
  const zoom = (factor: number, cx = width / 2, cy = height / 2) => {
    const next = Math.min(4, Math.max(0.2, view.scale * factor));
    view.x = cx - ((cx - view.x) * next) / view.scale;
    view.y = cy - ((cy - view.y) * next) / view.scale;
    view.scale = next;
    apply();
  };
  const fit = () => {
    view.x = 0;
    view.y = 0;
    view.scale = 1;
    apply();
  };
  const toSvg = (ev: { clientX: number; clientY: number }) => {
    const rect = svg.getBoundingClientRect();
    return { x: ((ev.clientX - rect.left) / rect.width) * width, y: ((ev.clientY - rect.top) / rect.height) * height };
  };
  svg.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const p = toSvg(ev as WheelEvent);
    zoom((ev as WheelEvent).deltaY < 0 ? 1.15 : 1 / 1.15, p.x, p.y);
  }, { passive: false });
  let drag: { x: number; y: number } | null = null;
  svg.addEventListener("pointerdown", (ev) => {
    drag = toSvg(ev as PointerEvent);
    (svg as unknown as Element).setPointerCapture((ev as PointerEvent).pointerId);
  });
  svg.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    const p = toSvg(ev as PointerEvent);
    view.x += p.x - drag.x;
    view.y += p.y - drag.y;
    drag = p;
    apply();
  });
  svg.addEventListener("pointerup", () => (drag = null));
  const frame = h("div", {
    class: "chart-frame",
    tabindex: 0,
    "aria-label": "Statechart: arrow keys pan, + and - zoom, 0 resets",
    onkeydown: (ev: Event) => {
      const key = (ev as KeyboardEvent).key;
      const step = 40 / view.scale;
      if (key === "+" || key === "=") zoom(1.2);
      else if (key === "-") zoom(1 / 1.2);
      else if (key === "0") fit();
      else if (key === "ArrowLeft") view.x += step;
      else if (key === "ArrowRight") view.x -= step;
      else if (key === "ArrowUp") view.y += step;
      else if (key === "ArrowDown") view.y -= step;
      else return;
      ev.preventDefault();
      apply();
    },
  });
  frame.appendChild(svg);
  const button = (text: string, label: string, fn: () => void) => h("button", { type: "button", class: "small", "aria-label": label, onclick: fn }, text);
  const element = h(
    "div",
    { class: "diagram" },
    h("div", { class: "chart-tools" }, button("+", "Zoom in", () => zoom(1.2)), button("−", "Zoom out", () => zoom(1 / 1.2)), button("Fit", "Reset the view", fit)),
    frame,
    warning ? h("p", { class: "muted" }, warning) : null,
  );

  return {
    element,
    highlight(stateValue: unknown) {
      const leaves = leafPaths(stateValue).map((p) => p.join("."));
      for (const [id, g] of groups) {
        const path = all.get(id)!.path.join(".");
        const current = leaves.includes(path);
        const active = path !== "" && leaves.some((leaf) => leaf === path || leaf.startsWith(`${path}.`));
        g.classList.toggle("active", active);
        g.classList.toggle("current", current);
        g.setAttribute("data-active", active ? "true" : "false");
      }
    },
  };
}

/** A state value as its leaf paths: "a" -> [["a"]]; {a: {b: "c"}, d: {}} -> [["a","b","c"], ["d"]]. */
export function leafPaths(value: unknown): string[][] {
  if (typeof value === "string") return [[value]];
  if (!value || typeof value !== "object") return [];
  const out: string[][] = [];
  for (const [key, sub] of Object.entries(value as Record<string, unknown>)) {
    const below = sub && (typeof sub === "string" || Object.keys(sub as object).length) ? leafPaths(sub) : [[]];
    for (const p of below) out.push([key, ...p]);
  }
  return out;
}
