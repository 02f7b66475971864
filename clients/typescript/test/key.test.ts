// Every vector of tests/data/key-vectors.json, offline and through the server's ComputeCacheKey.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import type { JsonObject } from "@bufbuild/protobuf";
import { fromJson } from "@bufbuild/protobuf";
import {
  cacheKey,
  canonicalBytes,
  InvalidArgumentError,
  InvalidInterfaceError,
  TaskInterfaceSchema,
} from "../src/index.js";
import { REPO_ROOT, withServer } from "./server.js";

interface Vector {
  name: string;
  interface: JsonObject;
  cache_key?: string;
  invalid?: string;
}

const vectors: Vector[] = JSON.parse(readFileSync(join(REPO_ROOT, "tests/data/key-vectors.json"), "utf8"));

test("the vectors cover valid and invalid interfaces", () => {
  assert.ok(vectors.length >= 20);
  assert.ok(vectors.some((v) => v.invalid !== undefined));
});

describe("offline key", () => {
  for (const v of vectors) {
    test(v.name, () => {
      for (const iface of [v.interface, fromJson(TaskInterfaceSchema, v.interface)]) {
        if (v.invalid !== undefined) {
          assert.throws(() => cacheKey(iface), InvalidInterfaceError);
        } else {
          assert.equal(cacheKey(iface), v.cache_key);
        }
      }
    });
  }

  test("canonical bytes start with the domain tag", () => {
    const tag = new TextEncoder().encode("stepcache/task-interface/v1");
    const bytes = canonicalBytes({ component: "noop" });
    assert.deepEqual([...bytes.subarray(0, 4)], [0, 0, 0, tag.length]);
    assert.deepEqual(bytes.subarray(4, 4 + tag.length), tag);
  });

  test("non-finite parameters and unknown fields are rejected", () => {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const ti = fromJson(TaskInterfaceSchema, { component: "c", parameters: { x: { nested: [1] } } });
      const nested = ti.parameters.x!.kind;
      assert.equal(nested.case, "structValue");
      nested.value.fields.nested!.kind = { case: "numberValue", value: bad };
      assert.throws(() => cacheKey(ti), /parameters\.x\.nested/);
    }
    assert.throws(() => cacheKey({ component: "c", unknown_field: 1 }), InvalidInterfaceError);
  });
});

describe("server key", () => {
  const sc = withServer();

  for (const v of vectors) {
    test(v.name, async () => {
      if (v.invalid !== undefined) {
        await assert.rejects(sc().computeKey(v.interface), InvalidArgumentError);
      } else {
        assert.equal(await sc().computeKey(v.interface), v.cache_key);
      }
    });
  }
});
