// The typed client against a real server: lookups, records, policy, wait, typed errors.
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  AlreadyExistsError,
  cacheKey,
  DeadlineExceededError,
  ExecutionState,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  Outcome,
  ResourceExhaustedError,
  StepcacheClient,
  StepcacheError,
  Trigger,
  UnavailableError,
} from "../src/index.js";
import * as sdk from "../src/index.js";
import { namespace, Server, withServer } from "./server.js";

function iface(component: string, params: Record<string, number> = {}, inputs: Record<string, number[]> = {}) {
  return {
    component,
    parameters: params,
    input_artifacts: Object.fromEntries(Object.entries(inputs).map(([k, ids]) => [k, { ids }])),
    output_artifacts: { out: "system.Dataset" },
  };
}

const sc = withServer();

describe("lookups and records", () => {
  test("miss, put, then hit with the same artifact IDs", async () => {
    const ti = iface("prepare", { rows: 100 });
    const miss = await sc().getCached(ti);
    assert.equal(miss.outcome, Outcome.MISS);
    assert.equal(miss.hit, false);
    assert.equal(miss.cacheKey, cacheKey(ti));
    assert.match(miss.reason, /no entry/);

    const put = await sc().putExecution(ti, {
      outputs: { out: { uri: "file:///tmp/data.csv", contentDigest: "sha256:00" } },
      outputParameters: { rows: 100 },
    });
    assert.equal(put.published, true);
    assert.equal(put.cacheKey, miss.cacheKey);
    assert.equal(put.outputs.out?.length, 1);

    const hit = await sc().getCached(ti);
    assert.equal(hit.outcome, Outcome.HIT);
    assert.equal(hit.hit, true);
    assert.equal(hit.execution?.id, put.executionId);
    assert.equal(hit.execution?.state, ExecutionState.COMPLETE);
    const [artifact] = hit.outputs.out ?? [];
    assert.equal(artifact?.id, put.outputs.out?.[0]);
    assert.equal(artifact?.uri, "file:///tmp/data.csv");
    assert.equal(artifact?.type, "system.Dataset"); // defaulted from the interface
    assert.deepEqual(hit.outputParameters, { rows: 100 });
    const [again] = await sc().getArtifacts([artifact!.id]);
    assert.equal(again?.uri, artifact?.uri);
  });

  test("a new upstream artifact ID changes the key", async () => {
    const first = (await sc().putExecution(iface("up"), { outputs: { out: "mem://same" } })).outputs.out![0]!;
    const second = (await sc().putExecution(iface("up"), { outputs: { out: "mem://same" } })).outputs.out![0]!;
    assert.notEqual(first, second);
    await sc().putExecution(iface("down", {}, { data: [Number(first)] }), { outputs: { out: "mem://d" } });
    assert.equal((await sc().getCached(iface("down", {}, { data: [Number(first)] }))).hit, true);
    assert.equal((await sc().getCached(iface("down", {}, { data: [Number(second)] }))).outcome, Outcome.MISS);
  });

  test("policy: trigger, enabled, record cached, failed executions", async () => {
    const ti = iface("policy");
    const put = await sc().putExecution(ti, { outputs: { out: ["mem://0", "mem://1"] } });
    assert.equal((await sc().getCached(ti, { trigger: Trigger.PIPELINE })).outcome, Outcome.HIT);
    const manual = await sc().getCached(ti, { trigger: Trigger.MANUAL });
    assert.equal(manual.outcome, Outcome.DISABLED);
    assert.match(manual.reason, /MANUAL/);
    assert.equal((await sc().getCached(ti, { trigger: Trigger.MANUAL, enabled: true })).outcome, Outcome.HIT);
    const recorded = await sc().getCached(ti, { recordCached: true });
    assert.equal(recorded.cachedExecution?.state, ExecutionState.CACHED);
    assert.equal(recorded.cachedExecution?.cachedFromExecutionId, put.executionId);
    assert.deepEqual(recorded.outputs.out?.map((a) => a.uri), ["mem://0", "mem://1"]);

    const flaky = iface("flaky");
    assert.equal((await sc().putExecution(flaky, { state: ExecutionState.FAILED })).published, false);
    assert.equal((await sc().getCached(flaky)).outcome, Outcome.MISS);
  });

  test("a waiter is woken by the holder's put", async () => {
    const ti = iface("waited");
    const reserved = await sc().getCached(ti, { reservationOwner: "task-1", leaseMs: 30_000 });
    assert.equal(reserved.outcome, Outcome.RESERVED);
    const other = await sc().getCached(ti, { reservationOwner: "task-2" });
    assert.equal(other.outcome, Outcome.IN_PROGRESS);
    assert.equal(other.reservation?.owner, "task-1");
    const waiter = sc().wait(other.cacheKey, 20_000);
    await sc().extendReservation(reserved.cacheKey, "task-1", 30_000);
    const put = await sc().putExecution(ti, { outputs: { out: "mem://w" }, reservationOwner: "task-1" });
    const woken = await waiter;
    assert.equal(woken.outcome, Outcome.HIT);
    assert.equal(woken.execution?.id, put.executionId);
  });

  test("contexts: one ID per (type, name)", async () => {
    const id = await sc().putContext("system.PipelineRun", "run-1", { pipeline: "demo" });
    assert.equal(await sc().putContext("system.PipelineRun", "run-1"), id);
  });
});

describe("typed errors", () => {
  test("one class per status; other statuses are StepcacheError", () => {
    const names = ["InvalidArgument", "NotFound", "AlreadyExists", "FailedPrecondition", "PermissionDenied",
      "Unauthenticated", "Unavailable", "ResourceExhausted", "DeadlineExceeded"] as const;
    for (const name of names) {
      const code = Code[name];
      const err = StepcacheError.fromError(new ConnectError("why", code));
      assert.equal(err.constructor, (sdk as Record<string, unknown>)[`${name}Error`], name);
      assert.equal(err.code, code);
      assert.equal(err.rawMessage, "why");
    }
    assert.equal(StepcacheError.fromError(new ConnectError("boom", Code.Internal)).constructor, StepcacheError);
    // tonic ends a call whose deadline ran out on its side with CANCELLED.
    const cancelled = new ConnectError("Timeout expired", Code.Canceled);
    assert.ok(StepcacheError.fromError(cancelled, true) instanceof DeadlineExceededError);
    assert.equal(StepcacheError.fromError(cancelled).code, Code.Canceled);
  });

  test("InvalidArgument, from both services, still a ConnectError", async () => {
    const err = await sc().putExecution(iface("")).catch((e: unknown) => e);
    assert.ok(err instanceof InvalidArgumentError);
    assert.ok(err instanceof StepcacheError);
    assert.ok(err instanceof ConnectError);
    assert.ok(!(err instanceof NotFoundError));
    assert.equal(err.code, Code.InvalidArgument);
    assert.match(err.rawMessage, /component/);
    await assert.rejects(sc().getCached(iface("")), InvalidArgumentError);
  });

  test("NotFound from methods and the raw clients", async () => {
    await assert.rejects(sc().putExecution(iface("consumer", {}, { data: [987654321] })), NotFoundError);
    await assert.rejects(sc().getArtifacts([987654321n]), NotFoundError);
    await assert.rejects(sc().metadata.getExecutions({ ids: [987654321n], namespace: sc().namespace }), NotFoundError);
  });

  test("AlreadyExists: an external_id reused for other content", async () => {
    const ti = iface("idempotent");
    const first = await sc().putExecution(ti, { outputs: { out: "mem://a" }, externalId: "run-1/task" });
    const again = await sc().putExecution(ti, { outputs: { out: "mem://a" }, externalId: "run-1/task" });
    assert.equal(again.executionId, first.executionId);
    await assert.rejects(
      sc().putExecution(ti, { outputs: { out: "mem://other" }, externalId: "run-1/task" }),
      AlreadyExistsError,
    );
  });

  test("FailedPrecondition: a reservation not held", async () => {
    const key = (await sc().getCached(iface("reserved"), { reservationOwner: "me" })).cacheKey;
    await assert.rejects(sc().extendReservation(key, "someone-else", 30_000), FailedPreconditionError);
    await assert.rejects(sc().releaseReservation(key, "someone-else"), FailedPreconditionError);
    await sc().releaseReservation(key, "me");
  });

  test("DeadlineExceeded", async () => {
    const key = (await sc().getCached(iface("slow"), { reservationOwner: "holder" })).cacheKey;
    for (let i = 0; i < 5; i++) {
      // The client's deadline and the server's CANCELLED race each time.
      await assert.rejects(
        sc().cache.waitForCachedExecution({ namespace: sc().namespace, cacheKey: key, timeout: { seconds: 30n } }, { timeoutMs: 200 }),
        DeadlineExceededError,
      );
    }
  });

  test("Unavailable: nobody listening", async () => {
    const nobody = new StepcacheClient("127.0.0.1:1", { timeoutMs: 10_000 });
    try {
      await assert.rejects(nobody.computeKey({ component: "c" }), UnavailableError);
    } finally {
      nobody.close();
    }
  });

  test("ResourceExhausted: a message over the server's limit", async () => {
    const small = new Server();
    await small.start("--max-message-bytes", "4096");
    const client = new StepcacheClient(small.addr, { namespace: namespace() });
    try {
      await client.putExecution(iface("small"));
      await assert.rejects(client.putExecution(iface("big"), { properties: { blob: "x".repeat(10_000) } }), ResourceExhaustedError);
    } finally {
      client.close();
      await small.stop();
    }
  });
});
