// What the scenario scripts share: the broker's address and keys from the environment, a
// client config that never retries (so every error reaches the test), error capture and the
// single JSON line a script prints.
//
// Environment: WHARF_ENDPOINT (http://127.0.0.1:PORT), AWS_REGION, AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY. The keys are passed to the clients directly: no ~/.aws file or
// credential provider chain is consulted.

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

export function clientConfig({ accessKeyId, secretAccessKey } = {}) {
  return {
    endpoint: required("WHARF_ENDPOINT"),
    region: required("AWS_REGION"),
    credentials: {
      accessKeyId: accessKeyId ?? required("AWS_ACCESS_KEY_ID"),
      secretAccessKey: secretAccessKey ?? required("AWS_SECRET_ACCESS_KEY"),
    },
    maxAttempts: 1,
    // Long polls last up to 10 s here; anything past 30 s is a hang, not a slow answer.
    requestHandler: { connectionTimeout: 5_000, requestTimeout: 30_000 },
  };
}

// An SDK error as the tests look at it: the class name the SDK chose, the HTTP status and
// the code and fault fields the SDK parsed out of the response.
export function describeError(error) {
  return {
    name: error?.name,
    httpStatusCode: error?.$metadata?.httpStatusCode,
    message: error?.message,
    code: error?.Code,
    type: error?.Type,
    fault: error?.$fault,
    requestId: error?.$metadata?.requestId,
  };
}

// Runs an action that must fail; its error described, plus instanceOf[label] for each class
// given, or {resolved: true} when it succeeded after all.
export async function failure(promise, classes = {}) {
  try {
    await promise;
    return { resolved: true };
  } catch (error) {
    const instanceOf = {};
    for (const [label, errorClass] of Object.entries(classes)) {
      instanceOf[label] = error instanceof errorClass;
    }
    return { ...describeError(error), instanceOf };
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export const base64 = (bytes) => Buffer.from(bytes).toString("base64");

// Runs the scenarios; prints their results as one JSON object on stdout, or, when a step the
// scenarios did not expect to fail throws, the step and the error on stderr with exit code 1.
export async function main(scenarios) {
  const progress = { step: "start" };
  try {
    const results = await scenarios((step) => {
      progress.step = step;
    });
    process.stdout.write(`${JSON.stringify(results)}\n`);
  } catch (error) {
    process.stderr.write(
      `${JSON.stringify({ step: progress.step, ...describeError(error), stack: error?.stack })}\n`,
    );
    process.exitCode = 1;
  }
}
