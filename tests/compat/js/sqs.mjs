// SQS scenarios through @aws-sdk/client-sqs (awsJson 1.0, the SDK's MD5 checks of message
// bodies on send, batch send and receive left on). Prints one JSON object of what the SDK
// returned; tests/compat/test_js_sdk.py asserts on it.

import {
  BatchEntryIdsNotDistinct,
  ChangeMessageVisibilityBatchCommand,
  ChangeMessageVisibilityCommand,
  CreateQueueCommand,
  DeleteMessageBatchCommand,
  DeleteMessageCommand,
  DeleteQueueCommand,
  EmptyBatchRequest,
  GetQueueAttributesCommand,
  GetQueueUrlCommand,
  InvalidAttributeName,
  ListDeadLetterSourceQueuesCommand,
  ListQueuesCommand,
  ListQueueTagsCommand,
  PurgeQueueCommand,
  QueueDoesNotExist,
  ReceiptHandleIsInvalid,
  ReceiveMessageCommand,
  SendMessageBatchCommand,
  SendMessageCommand,
  SetQueueAttributesCommand,
  SQSClient,
  SQSServiceException,
  TagQueueCommand,
  UntagQueueCommand,
} from "@aws-sdk/client-sqs";

import { base64, clientConfig, failure, main, sleep } from "./common.mjs";

const sqs = new SQSClient(clientConfig());

// Message attributes as JSON: binary values base64-encoded.
function plainAttributes(attributes) {
  if (attributes === undefined) {
    return undefined;
  }
  return Object.fromEntries(
    Object.entries(attributes).map(([name, value]) => [
      name,
      value.BinaryValue === undefined
        ? { DataType: value.DataType, StringValue: value.StringValue }
        : { DataType: value.DataType, BinaryValue: base64(value.BinaryValue) },
    ]),
  );
}

function plainMessage(message) {
  return {
    MessageId: message.MessageId,
    ReceiptHandle: message.ReceiptHandle,
    Body: message.Body,
    MD5OfBody: message.MD5OfBody,
    MD5OfMessageAttributes: message.MD5OfMessageAttributes,
    Attributes: message.Attributes,
    MessageAttributes: plainAttributes(message.MessageAttributes),
  };
}

const RECEIVE_ALL = {
  MaxNumberOfMessages: 10,
  AttributeNames: ["All"],
  MessageSystemAttributeNames: ["All"],
  MessageAttributeNames: ["All"],
};

// Receives until `count` messages have come (or 10 s have passed); what came, in order.
async function receive(QueueUrl, count, options = {}) {
  const messages = [];
  const deadline = Date.now() + 10_000;
  while (messages.length < count && Date.now() < deadline) {
    const output = await sqs.send(
      new ReceiveMessageCommand({ QueueUrl, WaitTimeSeconds: 1, ...RECEIVE_ALL, ...options }),
    );
    messages.push(...(output.Messages ?? []).map(plainMessage));
  }
  return messages;
}

async function counts(QueueUrl) {
  const { Attributes } = await sqs.send(
    new GetQueueAttributesCommand({
      QueueUrl,
      AttributeNames: [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
      ],
    }),
  );
  return Attributes;
}

async function createQueue(QueueName, Attributes = {}, tags = undefined) {
  const { QueueUrl } = await sqs.send(new CreateQueueCommand({ QueueName, Attributes, tags }));
  return QueueUrl;
}

async function queueArn(QueueUrl) {
  const { Attributes } = await sqs.send(
    new GetQueueAttributesCommand({ QueueUrl, AttributeNames: ["QueueArn"] }),
  );
  return Attributes.QueueArn;
}

// Every type of message attribute, custom type suffixes included.
const TYPED_ATTRIBUTES = {
  text: { DataType: "String", StringValue: "héllo <&> wörld" },
  count: { DataType: "Number", StringValue: "-12.50" },
  blob: { DataType: "Binary", BinaryValue: Uint8Array.from([0, 1, 2, 0xfe, 0xff]) },
  label: { DataType: "String.custom", StringValue: "tagged" },
  ratio: { DataType: "Number.float", StringValue: "0.25" },
  image: { DataType: "Binary.png", BinaryValue: Uint8Array.from([0x89, 0x50, 0x4e, 0x47]) },
};

const TRACE_HEADER = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";

await main(async (step) => {
  const results = {};

  step("create queues");
  const standardUrl = await createQueue(
    "js-standard",
    { VisibilityTimeout: "30" },
    { team: "wharf" },
  );
  const fifoUrl = await createQueue("js-orders.fifo", {
    FifoQueue: "true",
    ContentBasedDeduplication: "true",
  });
  results.create = {
    standardUrl,
    fifoUrl,
    standardUrlAgain: await createQueue("js-standard", { VisibilityTimeout: "30" }),
    getStandardUrl: (await sqs.send(new GetQueueUrlCommand({ QueueName: "js-standard" })))
      .QueueUrl,
    getFifoUrl: (await sqs.send(new GetQueueUrlCommand({ QueueName: "js-orders.fifo" }))).QueueUrl,
    fifoAttributes: (
      await sqs.send(new GetQueueAttributesCommand({ QueueUrl: fifoUrl, AttributeNames: ["All"] }))
    ).Attributes,
  };

  step("list queues in pages");
  const pageUrls = [];
  for (let i = 0; i < 5; i++) {
    pageUrls.push(await createQueue(`js-page-${i}`));
  }
  const pages = [];
  let NextToken;
  do {
    const output = await sqs.send(
      new ListQueuesCommand({ QueueNamePrefix: "js-page-", MaxResults: 2, NextToken }),
    );
    pages.push({ QueueUrls: output.QueueUrls ?? [], hasNextToken: output.NextToken !== undefined });
    NextToken = output.NextToken;
  } while (NextToken !== undefined && pages.length < 10);
  results.list = {
    created: pageUrls,
    pages,
    unpaged: (await sqs.send(new ListQueuesCommand({ QueueNamePrefix: "js-" }))).QueueUrls,
  };

  step("queue attributes");
  const before = (
    await sqs.send(
      new GetQueueAttributesCommand({ QueueUrl: standardUrl, AttributeNames: ["All"] }),
    )
  ).Attributes;
  await sqs.send(
    new SetQueueAttributesCommand({
      QueueUrl: standardUrl,
      Attributes: { VisibilityTimeout: "45", MessageRetentionPeriod: "3600" },
    }),
  );
  const after = (
    await sqs.send(
      new GetQueueAttributesCommand({
        QueueUrl: standardUrl,
        AttributeNames: ["VisibilityTimeout", "MessageRetentionPeriod", "QueueArn"],
      }),
    )
  ).Attributes;
  results.attributes = { before, after };

  step("tags");
  const createdTags = (await sqs.send(new ListQueueTagsCommand({ QueueUrl: standardUrl }))).Tags;
  await sqs.send(new TagQueueCommand({ QueueUrl: standardUrl, Tags: { env: "test", tier: "1" } }));
  const tagged = (await sqs.send(new ListQueueTagsCommand({ QueueUrl: standardUrl }))).Tags;
  await sqs.send(new UntagQueueCommand({ QueueUrl: standardUrl, TagKeys: ["team", "tier"] }));
  const untagged = (await sqs.send(new ListQueueTagsCommand({ QueueUrl: standardUrl }))).Tags;
  results.tags = { createdTags, tagged, untagged };

  step("send a message with every attribute type");
  const sent = await sqs.send(
    new SendMessageCommand({
      QueueUrl: standardUrl,
      MessageBody: "typed body ✓",
      MessageAttributes: TYPED_ATTRIBUTES,
      MessageSystemAttributes: {
        AWSTraceHeader: { DataType: "String", StringValue: TRACE_HEADER },
      },
    }),
  );
  results.send = {
    MessageId: sent.MessageId,
    MD5OfMessageBody: sent.MD5OfMessageBody,
    MD5OfMessageAttributes: sent.MD5OfMessageAttributes,
    MD5OfMessageSystemAttributes: sent.MD5OfMessageSystemAttributes,
    traceHeader: TRACE_HEADER,
    attributesSent: plainAttributes(TYPED_ATTRIBUTES),
  };

  step("send a delayed message");
  const delayedAt = Date.now();
  const delayed = await sqs.send(
    new SendMessageCommand({ QueueUrl: standardUrl, MessageBody: "delayed", DelaySeconds: 2 }),
  );
  results.delay = { MessageId: delayed.MessageId, countsRightAfter: await counts(standardUrl) };

  step("send a batch with one invalid entry");
  const batch = await sqs.send(
    new SendMessageBatchCommand({
      QueueUrl: standardUrl,
      Entries: [
        { Id: "first", MessageBody: "batch one" },
        {
          Id: "second",
          MessageBody: "batch two",
          MessageAttributes: { kind: { DataType: "String", StringValue: "batched" } },
        },
        { Id: "bad", MessageBody: "control character \u0000 is not allowed" },
      ],
    }),
  );
  results.batch = { Successful: batch.Successful ?? [], Failed: batch.Failed ?? [] };

  step("receive everything with every attribute");
  const received = await receive(standardUrl, 3);
  results.receive = { messages: received };

  step("change visibility");
  const byBody = Object.fromEntries(received.map((message) => [message.Body, message]));
  await sqs.send(
    new ChangeMessageVisibilityCommand({
      QueueUrl: standardUrl,
      ReceiptHandle: byBody["batch one"].ReceiptHandle,
      VisibilityTimeout: 0,
    }),
  );
  const again = await receive(standardUrl, 1);
  const changedBatch = await sqs.send(
    new ChangeMessageVisibilityBatchCommand({
      QueueUrl: standardUrl,
      Entries: [
        { Id: "visible", ReceiptHandle: byBody["batch two"].ReceiptHandle, VisibilityTimeout: 0 },
        { Id: "bogus", ReceiptHandle: "not-a-receipt-handle", VisibilityTimeout: 0 },
      ],
    }),
  );
  const againFromBatch = await receive(standardUrl, 1);
  results.visibility = {
    again,
    batch: { Successful: changedBatch.Successful ?? [], Failed: changedBatch.Failed ?? [] },
    againFromBatch,
  };

  step("the delayed message arrives after its delay");
  const delayedMessages = await receive(standardUrl, 1, { WaitTimeSeconds: 5 });
  results.delay.received = delayedMessages;
  results.delay.secondsAfterSend = (Date.now() - delayedAt) / 1000;

  step("delete messages");
  await sqs.send(
    new DeleteMessageCommand({
      QueueUrl: standardUrl,
      ReceiptHandle: byBody["typed body ✓"].ReceiptHandle,
    }),
  );
  const deleteBatch = await sqs.send(
    new DeleteMessageBatchCommand({
      QueueUrl: standardUrl,
      Entries: [
        { Id: "one", ReceiptHandle: again[0].ReceiptHandle },
        { Id: "two", ReceiptHandle: againFromBatch[0].ReceiptHandle },
        { Id: "late", ReceiptHandle: delayedMessages[0].ReceiptHandle },
        { Id: "bogus", ReceiptHandle: "not-a-receipt-handle" },
      ],
    }),
  );
  results.delete = {
    batch: { Successful: deleteBatch.Successful ?? [], Failed: deleteBatch.Failed ?? [] },
    countsAfter: await counts(standardUrl),
  };

  step("a long poll woken by a send");
  const pollUrl = await createQueue("js-long-poll");
  const pollStarted = Date.now();
  // Only the newer MessageSystemAttributeNames (no AttributeNames), and one attribute by name.
  const poll = sqs.send(
    new ReceiveMessageCommand({
      QueueUrl: pollUrl,
      WaitTimeSeconds: 10,
      MessageSystemAttributeNames: ["SenderId", "ApproximateReceiveCount"],
      MessageAttributeNames: ["wanted"],
    }),
  );
  await sleep(1_000);
  await sqs.send(
    new SendMessageCommand({
      QueueUrl: pollUrl,
      MessageBody: "wake up",
      MessageAttributes: {
        wanted: { DataType: "String", StringValue: "yes" },
        unwanted: { DataType: "String", StringValue: "no" },
      },
    }),
  );
  const woken = await poll;
  results.longPoll = {
    messages: (woken.Messages ?? []).map(plainMessage),
    seconds: (Date.now() - pollStarted) / 1000,
  };

  step("FIFO order within a group and deduplication");
  const fifoSends = [];
  for (const [body, group] of [
    ["a1", "alpha"],
    ["b1", "beta"],
    ["a2", "alpha"],
    ["a3", "alpha"],
    ["b2", "beta"],
  ]) {
    const output = await sqs.send(
      new SendMessageCommand({ QueueUrl: fifoUrl, MessageBody: body, MessageGroupId: group }),
    );
    fifoSends.push({ body, MessageId: output.MessageId, SequenceNumber: output.SequenceNumber });
  }
  const duplicate = await sqs.send(
    new SendMessageCommand({ QueueUrl: fifoUrl, MessageBody: "a1", MessageGroupId: "alpha" }),
  );
  const explicitFirst = await sqs.send(
    new SendMessageCommand({
      QueueUrl: fifoUrl,
      MessageBody: "a4",
      MessageGroupId: "alpha",
      MessageDeduplicationId: "dedup-a4",
    }),
  );
  const explicitDuplicate = await sqs.send(
    new SendMessageCommand({
      QueueUrl: fifoUrl,
      MessageBody: "a4, but another body",
      MessageGroupId: "alpha",
      MessageDeduplicationId: "dedup-a4",
    }),
  );
  const fifoReceived = await receive(fifoUrl, 6, { VisibilityTimeout: 60 });
  results.fifo = {
    sends: fifoSends,
    duplicate: { MessageId: duplicate.MessageId },
    explicitFirst: { MessageId: explicitFirst.MessageId },
    explicitDuplicate: { MessageId: explicitDuplicate.MessageId },
    received: fifoReceived,
    afterwards: await counts(fifoUrl),
  };

  step("a dead-letter queue via RedrivePolicy");
  const dlqUrl = await createQueue("js-dead-letters");
  const dlqArn = await queueArn(dlqUrl);
  const sourceUrl = await createQueue("js-redriven", {
    RedrivePolicy: JSON.stringify({ deadLetterTargetArn: dlqArn, maxReceiveCount: 1 }),
  });
  await sqs.send(new SendMessageCommand({ QueueUrl: sourceUrl, MessageBody: "doomed" }));
  const firstTry = await receive(sourceUrl, 1, { VisibilityTimeout: 0 });
  const secondTry = await sqs.send(
    new ReceiveMessageCommand({ QueueUrl: sourceUrl, WaitTimeSeconds: 1, ...RECEIVE_ALL }),
  );
  results.deadLetter = {
    dlqArn,
    sourceRedrivePolicy: (
      await sqs.send(
        new GetQueueAttributesCommand({ QueueUrl: sourceUrl, AttributeNames: ["RedrivePolicy"] }),
      )
    ).Attributes.RedrivePolicy,
    firstTry,
    secondTry: (secondTry.Messages ?? []).map(plainMessage),
    inDeadLetterQueue: await receive(dlqUrl, 1),
    sources: (await sqs.send(new ListDeadLetterSourceQueuesCommand({ QueueUrl: dlqUrl })))
      .queueUrls,
  };

  step("purge");
  const purgeUrl = await createQueue("js-purged");
  for (let i = 0; i < 3; i++) {
    await sqs.send(new SendMessageCommand({ QueueUrl: purgeUrl, MessageBody: `purge me ${i}` }));
  }
  const beforePurge = await counts(purgeUrl);
  await sqs.send(new PurgeQueueCommand({ QueueUrl: purgeUrl }));
  results.purge = { before: beforePurge, after: await counts(purgeUrl) };

  step("errors");
  const errorClasses = {
    BatchEntryIdsNotDistinct,
    EmptyBatchRequest,
    InvalidAttributeName,
    QueueDoesNotExist,
    ReceiptHandleIsInvalid,
    SQSServiceException,
  };
  results.errors = {
    getUrlOfUnknownQueue: await failure(
      sqs.send(new GetQueueUrlCommand({ QueueName: "js-no-such-queue" })),
      errorClasses,
    ),
    deleteInvalidHandle: await failure(
      sqs.send(
        new DeleteMessageCommand({ QueueUrl: standardUrl, ReceiptHandle: "not-a-receipt-handle" }),
      ),
      errorClasses,
    ),
    changeVisibilityInvalidHandle: await failure(
      sqs.send(
        new ChangeMessageVisibilityCommand({
          QueueUrl: standardUrl,
          ReceiptHandle: "not-a-receipt-handle",
          VisibilityTimeout: 10,
        }),
      ),
      errorClasses,
    ),
    emptyBatch: await failure(
      sqs.send(new SendMessageBatchCommand({ QueueUrl: standardUrl, Entries: [] })),
      errorClasses,
    ),
    duplicateBatchIds: await failure(
      sqs.send(
        new SendMessageBatchCommand({
          QueueUrl: standardUrl,
          Entries: [
            { Id: "same", MessageBody: "one" },
            { Id: "same", MessageBody: "two" },
          ],
        }),
      ),
      errorClasses,
    ),
    unknownQueueAttribute: await failure(
      sqs.send(
        new CreateQueueCommand({ QueueName: "js-bad-attribute", Attributes: { Bogus: "1" } }),
      ),
      errorClasses,
    ),
    wrongSecretKey: await failure(
      new SQSClient(clientConfig({ secretAccessKey: "not-the-secret-key" })).send(
        new ListQueuesCommand({}),
      ),
      errorClasses,
    ),
    unknownAccessKey: await failure(
      new SQSClient(clientConfig({ accessKeyId: "AKIAUNKNOWNKEY000000" })).send(
        new ListQueuesCommand({}),
      ),
      errorClasses,
    ),
  };

  step("delete queues");
  await sqs.send(new DeleteQueueCommand({ QueueUrl: purgeUrl }));
  results.deleteQueue = {
    getUrlAfterDelete: await failure(
      sqs.send(new GetQueueUrlCommand({ QueueName: "js-purged" })),
      errorClasses,
    ),
    sendAfterDelete: await failure(
      sqs.send(new SendMessageCommand({ QueueUrl: purgeUrl, MessageBody: "too late" })),
      errorClasses,
    ),
    listedAfterDelete: (await sqs.send(new ListQueuesCommand({ QueueNamePrefix: "js-purged" })))
      .QueueUrls,
  };
  return results;
});
