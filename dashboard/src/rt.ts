// The /rt WebSocket (docs/realtime.md): subscribe to one instance, get every committed update.
// Reconnects with a growing delay; re-subscribing sends the current state first, so the page
// converges on the latest state after a drop.

import { apiBase, Session } from "./api";

export interface InstanceUpdate {
  type: "instance-update";
  ts: number;
  state: unknown;
  publicContext: Record<string, unknown>;
  tags: string[];
  done: boolean;
}

export interface Subscription {
  close(): void;
}

export function subscribe(
  session: Session,
  machine: string,
  instance: string,
  act: Record<string, unknown> | null,
  handlers: {
    update: (u: InstanceUpdate) => void;
    status: (s: "connecting" | "live" | "error", detail?: string) => void;
  },
): Subscription {
  let socket: WebSocket | null = null;
  let closed = false;
  let delay = 500;
  let ping: number | undefined;
  let lastTs = 0;
  const requestId = `dash-${Math.random().toString(36).slice(2)}`;

  const open = () => {
    if (closed) return;
    handlers.status("connecting");
    const url = new URL(`${apiBase}/rt`, location.origin);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", session.token);
    if (session.orgId) url.searchParams.set("x-statebacked-org-id", session.orgId);
    if (act) url.searchParams.set("x-statebacked-act", JSON.stringify(act));
    socket = new WebSocket(url);
    socket.onopen = () => {
      delay = 500;
      socket?.send(JSON.stringify({ type: "subscribe-to-instance", requestId, machineName: machine, machineInstanceName: instance }));
      ping = window.setInterval(() => socket?.send(JSON.stringify({ type: "ping" })), 240_000);
    };
    socket.onmessage = (message) => {
      let data: any;
      try {
        data = JSON.parse(String(message.data));
      } catch {
        return;
      }
      if (data.type === "instance-update") {
        handlers.status("live");
        if (typeof data.ts === "number" && data.ts < lastTs) return; // never backwards
        lastTs = data.ts;
        handlers.update(data as InstanceUpdate);
      } else if (data.type === "error") {
        handlers.status("error", `the subscription was refused (${data.status}, ${data.code})`);
        closed = true;
        socket?.close();
      }
    };
    socket.onclose = () => {
      window.clearInterval(ping);
      if (closed) return;
      handlers.status("connecting");
      window.setTimeout(open, delay);
      delay = Math.min(delay * 2, 10_000);
    };
  };
  open();
  return {
    close() {
      closed = true;
      window.clearInterval(ping);
      socket?.close();
    },
  };
}
