// Validates webhook bodies against octokit's webhook schemas.
// stdin: [{"schema": "push$event", "body": {...}}, ...]
// stdout: one entry per input: null when valid, else ajv's errors.
"use strict";
const Ajv = require("ajv");
const addFormats = require("ajv-formats");
const schema = require("@octokit/webhooks-schemas");

// strict: false because the schemas carry keywords of their own (tsType...).
const ajv = new Ajv({ strict: false, allErrors: true });
addFormats(ajv);
ajv.addSchema(schema, "webhooks");

let input = "";
process.stdin.on("data", (c) => (input += c));
process.stdin.on("end", () => {
  const out = JSON.parse(input).map(({ schema: name, body }) => {
    const validate = ajv.getSchema(`webhooks#/definitions/${name}`);
    if (!validate) return [{ message: `no definition ${name} in the schema package` }];
    return validate(body) ? null : validate.errors;
  });
  process.stdout.write(JSON.stringify(out));
});
