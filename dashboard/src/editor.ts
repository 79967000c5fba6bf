// The code editor (CodeMirror 6, TypeScript highlighting), loaded only on pages that edit code.
// The server's bundling diagnostics (line, column) are shown in the gutter and under the line.

import { defaultKeymap, history, historyKeymap } from "@codemirror/commands";
import { javascript } from "@codemirror/lang-javascript";
import { bracketMatching, defaultHighlightStyle, indentOnInput, syntaxHighlighting } from "@codemirror/language";
import { type Diagnostic as CmDiagnostic, lintGutter, setDiagnostics } from "@codemirror/lint";
import { EditorState } from "@codemirror/state";
import { EditorView, highlightActiveLine, highlightActiveLineGutter, keymap, lineNumbers } from "@codemirror/view";
import type { Diagnostic } from "./api";

export interface CodeEditor {
  text(): string;
  setText(text: string): void;
  showDiagnostics(diagnostics: Diagnostic[]): void;
  goTo(line: number, column?: number): void;
  focus(): void;
}

export function createEditor(parent: HTMLElement, initial: string, label: string, onChange?: () => void): CodeEditor {
  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc: initial,
      extensions: [
        lineNumbers(),
        highlightActiveLineGutter(),
        highlightActiveLine(),
        history(),
        indentOnInput(),
        bracketMatching(),
        syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
        javascript({ typescript: true }),
        lintGutter(),
        // Tab is left to the browser (moving focus), so the editor never traps keyboard users.
        keymap.of([...defaultKeymap, ...historyKeymap]),
        EditorView.contentAttributes.of({ "aria-label": label }),
        EditorView.updateListener.of((u) => {
          if (u.docChanged && onChange) onChange();
        }),
      ],
    }),
  });
  const position = (line: number, column = 1) => {
    const doc = view.state.doc;
    const l = doc.line(Math.min(Math.max(line, 1), doc.lines));
    return Math.min(l.from + Math.max(column - 1, 0), l.to);
  };
  return {
    text: () => view.state.doc.toString(),
    setText(text) {
      view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
    },
    showDiagnostics(diagnostics) {
      const marks: CmDiagnostic[] = diagnostics
        .filter((d) => typeof d.line === "number")
        .map((d) => {
          const from = position(d.line as number, d.column);
          const line = view.state.doc.lineAt(from);
          return { from, to: Math.max(from, line.to), severity: "error", message: d.message, source: "server bundler" };
        });
      view.dispatch(setDiagnostics(view.state, marks));
    },
    goTo(line, column) {
      const at = position(line, column);
      view.dispatch({ selection: { anchor: at }, effects: EditorView.scrollIntoView(at, { y: "center" }) });
      view.focus();
    },
    focus: () => view.focus(),
  };
}
