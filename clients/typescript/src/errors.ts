// Typed errors: one class per gRPC status that the stepcache API answers.
//
// Every method of StepcacheClient, and its raw clients (`cache`, `metadata`),
// throws a StepcacheError subclass. Each is still a Connect `ConnectError`
// (`err instanceof ConnectError`, `err.code`, `err.rawMessage`, `err.metadata`),
// so code written to Connect's conventions keeps working, and adds a class per
// status for `catch (e) { if (e instanceof NotFoundError) ... }`.
import { Code, ConnectError } from "@connectrpc/connect";

export class StepcacheError extends ConnectError {
  // Connect recognises its errors by name as well as by prototype
  // (ConnectError[Symbol.hasInstance]): keeping the name keeps
  // `instanceof ConnectError` true for these.
  override name = "ConnectError";

  /** `instanceof` by the prototype chain, so that each subclass matches only its own errors. */
  static override [Symbol.hasInstance](v: unknown): boolean {
    return Function.prototype[Symbol.hasInstance].call(this, v);
  }

  /**
   * The typed error for any value thrown by a Connect call. With
   * `deadlinePassed` (the call's deadline is over) a Canceled answer means the
   * deadline ended the call: a tonic server ends such a call itself with
   * CANCELLED ("Timeout expired"), which may reach the client first.
   */
  static fromError(e: unknown, deadlinePassed = false): StepcacheError {
    if (e instanceof StepcacheError) return e;
    const err = ConnectError.from(e);
    const code = err.code === Code.Canceled && deadlinePassed ? Code.DeadlineExceeded : err.code;
    const Cls = BY_CODE.get(code) ?? StepcacheError;
    return new Cls(err.rawMessage, code, err.metadata, undefined, err);
  }
}

/** The request is malformed: a field missing, too long, or out of range. */
export class InvalidArgumentError extends StepcacheError {}
/** A record the request names does not exist in its namespace. */
export class NotFoundError extends StepcacheError {}
/** The record to create exists already (an external_id reused for other content). */
export class AlreadyExistsError extends StepcacheError {}
/** The state does not allow the request (a reservation not held). */
export class FailedPreconditionError extends StepcacheError {}
/** The token may not use this namespace. */
export class PermissionDeniedError extends StepcacheError {}
/** No token, or one the server does not know. */
export class UnauthenticatedError extends StepcacheError {}
/** The server cannot be reached or is shutting down. */
export class UnavailableError extends StepcacheError {}
/** The server shed the call, or a message is over its size limit. */
export class ResourceExhaustedError extends StepcacheError {}
/** The deadline passed before the server answered. */
export class DeadlineExceededError extends StepcacheError {}

const BY_CODE = new Map<Code, new (...args: ConstructorParameters<typeof ConnectError>) => StepcacheError>([
  [Code.InvalidArgument, InvalidArgumentError],
  [Code.NotFound, NotFoundError],
  [Code.AlreadyExists, AlreadyExistsError],
  [Code.FailedPrecondition, FailedPreconditionError],
  [Code.PermissionDenied, PermissionDeniedError],
  [Code.Unauthenticated, UnauthenticatedError],
  [Code.Unavailable, UnavailableError],
  [Code.ResourceExhausted, ResourceExhaustedError],
  [Code.DeadlineExceeded, DeadlineExceededError],
]);
