// AWS's own SNS message validator (sns-validator, github.com/aws/aws-js-sns-message-validator)
// over envelopes a test collected from a real wharf-broker. It checks what a subscriber's
// code checks before trusting a message: the keys a type needs, SignatureVersion 1 (SHA1withRSA)
// or 2 (SHA256withRSA) over AWS's string to sign, and a SigningCertURL that is https, ends in
// .pem and names a trusted host, from which it fetches the certificate.
//
// stdin: {"hostPattern": "<regular expression>", "envelopes": [<envelope>, ...]}
// stdout: one JSON line, [{"valid": true} | {"valid": false, "error": "..."}, ...] in order.
// The broker's TLS certificate is trusted through NODE_EXTRA_CA_CERTS, set by the test.

import MessageValidator from "sns-validator";

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

function validate(validator, envelope) {
  return new Promise((resolve) => {
    validator.validate(envelope, (error) => {
      resolve(error ? { valid: false, error: String(error.message ?? error) } : { valid: true });
    });
  });
}

const { hostPattern, envelopes } = await readStdin();
const validator = new MessageValidator(new RegExp(hostPattern));
const results = [];
for (const envelope of envelopes) {
  results.push(await validate(validator, envelope));
}
process.stdout.write(JSON.stringify(results) + "\n");
