// A real stepcache server for the tests: $STEPCACHE_BIN, by default
// target/release/stepcache at the repository root (build it first).
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, openSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { randomUUID } from "node:crypto";
import { after, before } from "node:test";
import { generate } from "selfsigned";
import { StepcacheClient } from "../src/index.js";

export const REPO_ROOT = resolve(import.meta.dirname, "../../../..");

function binary(): string {
  const bin = process.env.STEPCACHE_BIN ?? join(REPO_ROOT, "target/release/stepcache");
  if (!existsSync(bin)) {
    throw new Error(`no server binary at ${bin}: run 'cargo build --release' or set STEPCACHE_BIN`);
  }
  return bin;
}

async function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const srv = createServer();
    srv.once("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === "object" && addr ? done(addr.port) : fail(new Error("no port"))));
    });
  });
}

function listening(port: number): Promise<boolean> {
  return new Promise((done) => {
    const sock = createConnection({ host: "127.0.0.1", port });
    sock.once("connect", () => {
      sock.destroy();
      done(true);
    });
    sock.once("error", () => done(false));
  });
}

/** One server process on a fresh data dir and a free port; `stop()` ends it with SIGTERM. */
export class Server {
  readonly dir = mkdtempSync(join(tmpdir(), "stepcache-ts-"));
  addr = "";
  private proc?: ChildProcess;

  async start(...args: string[]): Promise<this> {
    const port = await freePort();
    this.addr = `127.0.0.1:${port}`;
    const log = openSync(join(this.dir, "server.log"), "a");
    const proc = spawn(binary(), ["serve", "--listen", this.addr, "--data-dir", join(this.dir, "data"), ...args], {
      stdio: ["ignore", log, log],
    });
    this.proc = proc;
    const deadline = Date.now() + 30_000;
    // Listening is enough: TLS and tokens make a gRPC probe server-specific.
    while (!(await listening(port))) {
      if (proc.exitCode !== null || Date.now() > deadline) {
        throw new Error(`stepcache did not come up on ${this.addr}; see ${join(this.dir, "server.log")}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    return this;
  }

  async stop(): Promise<void> {
    const proc = this.proc;
    if (proc === undefined || proc.exitCode !== null) return;
    const exited = new Promise<number | null>((done) => proc.once("exit", (code) => done(code)));
    proc.kill("SIGTERM");
    const code = await exited;
    if (code !== 0) throw new Error(`server exited with ${code}; see ${join(this.dir, "server.log")}`);
  }
}

/** A namespace of its own for each test. */
export function namespace(): string {
  return `ts-${randomUUID().slice(0, 12)}`;
}

export interface TlsServer {
  server: Server;
  /** The PEM of the CA that signed the server's certificate. */
  ca: string;
  /** A token that may use namespace team-a only. */
  token: string;
}

/** A server with TLS (a throwaway CA) and bearer tokens. */
export async function startTlsServer(): Promise<TlsServer> {
  const server = new Server();
  const ca = await generate([{ name: "commonName", value: "stepcache test CA" }], {
    keyType: "ec",
    algorithm: "sha256",
    extensions: [
      { name: "basicConstraints", cA: true, critical: true },
      { name: "keyUsage", keyCertSign: true, cRLSign: true, critical: true },
    ],
  });
  const leaf = await generate([{ name: "commonName", value: "localhost" }], {
    keyType: "ec",
    algorithm: "sha256",
    ca: { key: ca.private, cert: ca.cert },
    extensions: [
      { name: "basicConstraints", cA: false },
      { name: "subjectAltName", altNames: [{ type: 2, value: "localhost" }, { type: 7, ip: "127.0.0.1" }] },
    ],
  });
  const token = `good-${randomUUID()}`;
  const files = { cert: join(server.dir, "server.pem"), key: join(server.dir, "server.key"), tokens: join(server.dir, "tokens") };
  writeFileSync(files.cert, leaf.cert);
  writeFileSync(files.key, leaf.private);
  writeFileSync(files.tokens, `# test tokens\n${token} team-a\n`);
  await server.start("--tls-cert", files.cert, "--tls-key", files.key, "--auth-tokens", files.tokens);
  return { server, ca: ca.cert, token };
}

/** Registers before/after hooks: a server of its own, and a client in a namespace of its own. */
export function withServer(): () => StepcacheClient {
  const server = new Server();
  let client: StepcacheClient | undefined;
  before(async () => {
    await server.start();
    client = new StepcacheClient(server.addr, { namespace: namespace() });
  });
  after(async () => {
    client?.close();
    await server.stop();
  });
  return () => {
    if (client === undefined) throw new Error("withServer: the client exists once the before hook ran");
    return client;
  };
}
