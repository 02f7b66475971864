// TLS and bearer tokens against a server run with --tls-cert and --auth-tokens.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { Code } from "@connectrpc/connect";
import { Outcome, PermissionDeniedError, StepcacheClient, StepcacheError, UnauthenticatedError } from "../src/index.js";
import { startTlsServer, type TlsServer } from "./server.js";

const IFACE = { component: "secure", output_artifacts: { out: "system.Dataset" } };
let tls: TlsServer;
before(async () => {
  tls = await startTlsServer();
});
after(async () => {
  await tls.server.stop();
});

async function withClient<T>(namespace: string, token: string | undefined, f: (sc: StepcacheClient) => Promise<T>) {
  const sc = new StepcacheClient(tls.server.addr, { namespace, ca: tls.ca, token });
  try {
    return await f(sc);
  } finally {
    sc.close();
  }
}

test("a good token reads and writes its namespace", async () => {
  await withClient("team-a", tls.token, async (sc) => {
    const put = await sc.putExecution(IFACE, { outputs: { out: "mem://secure" } });
    const hit = await sc.getCached(IFACE);
    assert.equal(hit.outcome, Outcome.HIT);
    assert.equal(hit.execution?.id, put.executionId);
  });
});

test("a good token in another namespace is PermissionDenied", async () => {
  await withClient("team-b", tls.token, (sc) => assert.rejects(sc.getCached(IFACE), PermissionDeniedError));
});

test("a bad or missing token is Unauthenticated", async () => {
  for (const token of ["not-a-token", undefined]) {
    await withClient("team-a", token, async (sc) => {
      await assert.rejects(sc.getCached(IFACE), UnauthenticatedError);
      await assert.rejects(sc.computeKey(IFACE), UnauthenticatedError);
    });
  }
});

test("an untrusted server or a plaintext client is refused", async () => {
  // Connect for Node reports these as it sees them (grpc-python says UNAVAILABLE for both):
  // the default roots do not include the test CA: INTERNAL, naming the certificate;
  // HTTP/2 in clear against TLS: the stream is cancelled.
  const cases = [
    { options: { tls: true }, code: Code.Internal, message: /certificate/ },
    { options: {}, code: Code.Canceled, message: /stream closed/ },
  ];
  for (const { options, code, message } of cases) {
    const sc = new StepcacheClient(tls.server.addr, { namespace: "team-a", token: tls.token, ...options });
    try {
      const err = await sc.computeKey(IFACE).catch((e: unknown) => e);
      assert.ok(err instanceof StepcacheError);
      assert.equal(err.code, code);
      assert.match(err.rawMessage, message);
    } finally {
      sc.close();
    }
  }
});

test("a token is not sent in clear off loopback", () => {
  assert.throws(() => new StepcacheClient("stepcache.example:50051", { token: "t" }), /TLS/);
  new StepcacheClient("stepcache.example:50051", { token: "t", tls: true }).close();
});
