// SNS scenarios through @aws-sdk/client-sns (query protocol, XML answers), with the deliveries
// read back through @aws-sdk/client-sqs as a consumer would. Prints one JSON object of what
// the SDKs returned; tests/compat/test_js_sdk.py asserts on it.

import {
  CreateTopicCommand,
  DeleteTopicCommand,
  GetSubscriptionAttributesCommand,
  GetTopicAttributesCommand,
  InvalidParameterException,
  ListSubscriptionsByTopicCommand,
  ListTagsForResourceCommand,
  ListTopicsCommand,
  NotFoundException,
  PublishBatchCommand,
  PublishCommand,
  SetSubscriptionAttributesCommand,
  SetTopicAttributesCommand,
  SNSClient,
  SNSServiceException,
  SubscribeCommand,
  TagResourceCommand,
  UnsubscribeCommand,
  UntagResourceCommand,
} from "@aws-sdk/client-sns";
import {
  CreateQueueCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SQSClient,
} from "@aws-sdk/client-sqs";

import { base64, clientConfig, failure, main } from "./common.mjs";

const sns = new SNSClient(clientConfig());
const sqs = new SQSClient(clientConfig());

async function createQueue(QueueName, Attributes = {}) {
  const { QueueUrl } = await sqs.send(new CreateQueueCommand({ QueueName, Attributes }));
  const { Attributes: found } = await sqs.send(
    new GetQueueAttributesCommand({ QueueUrl, AttributeNames: ["QueueArn"] }),
  );
  return { url: QueueUrl, arn: found.QueueArn };
}

// Receives and deletes until `count` messages have come, then waits one more second for any
// extra (a filter that let too much through shows up here); what came, in order.
async function drain(QueueUrl, count) {
  const messages = [];
  const deadline = Date.now() + 10_000;
  for (;;) {
    const enough = messages.length >= count;
    if (!enough && Date.now() > deadline) {
      break;
    }
    const output = await sqs.send(
      new ReceiveMessageCommand({
        QueueUrl,
        MaxNumberOfMessages: 10,
        WaitTimeSeconds: 1,
        MessageAttributeNames: ["All"],
        MessageSystemAttributeNames: ["All"],
      }),
    );
    const batch = output.Messages ?? [];
    for (const message of batch) {
      await sqs.send(new DeleteMessageCommand({ QueueUrl, ReceiptHandle: message.ReceiptHandle }));
      messages.push({
        Body: message.Body,
        Attributes: message.Attributes,
        MessageAttributes: Object.fromEntries(
          Object.entries(message.MessageAttributes ?? {}).map(([name, value]) => [
            name,
            value.BinaryValue === undefined
              ? { DataType: value.DataType, StringValue: value.StringValue }
              : { DataType: value.DataType, BinaryValue: base64(value.BinaryValue) },
          ]),
        ),
      });
    }
    if (enough && batch.length === 0) {
      break;
    }
  }
  return messages;
}

async function listAll(command, key, input) {
  const items = [];
  let NextToken;
  do {
    const output = await sns.send(new command({ ...input, NextToken }));
    items.push(...(output[key] ?? []));
    NextToken = output.NextToken;
  } while (NextToken !== undefined);
  return items;
}

const topicAttributes = async (TopicArn) =>
  (await sns.send(new GetTopicAttributesCommand({ TopicArn }))).Attributes;

await main(async (step) => {
  const results = {};

  step("create topics");
  const topicArn = (
    await sns.send(
      new CreateTopicCommand({
        Name: "js-events",
        Attributes: { DisplayName: "JS events" },
        Tags: [{ Key: "team", Value: "wharf" }],
      }),
    )
  ).TopicArn;
  const fifoTopicArn = (
    await sns.send(
      new CreateTopicCommand({
        Name: "js-events.fifo",
        Attributes: { FifoTopic: "true", ContentBasedDeduplication: "true" },
      }),
    )
  ).TopicArn;
  results.topics = {
    topicArn,
    fifoTopicArn,
    again: (await sns.send(new CreateTopicCommand({ Name: "js-events" }))).TopicArn,
    fifoAttributes: await topicAttributes(fifoTopicArn),
  };

  step("subscribe queues");
  const wrapped = await createQueue("js-sns-wrapped");
  const raw = await createQueue("js-sns-raw");
  const filtered = await createQueue("js-sns-filtered");
  const fifoQueue = await createQueue("js-sns-ordered.fifo", { FifoQueue: "true" });
  const subscribe = async (TopicArn, Endpoint, Attributes = undefined) =>
    (
      await sns.send(
        new SubscribeCommand({
          TopicArn,
          Protocol: "sqs",
          Endpoint,
          Attributes,
          ReturnSubscriptionArn: true,
        }),
      )
    ).SubscriptionArn;
  const wrappedSubscription = await subscribe(topicArn, wrapped.arn);
  const rawSubscription = await subscribe(topicArn, raw.arn, { RawMessageDelivery: "true" });
  const filteredSubscription = await subscribe(topicArn, filtered.arn);
  const fifoSubscription = await subscribe(fifoTopicArn, fifoQueue.arn, {
    RawMessageDelivery: "true",
  });
  const filterPolicy = JSON.stringify({ color: ["red"] });
  await sns.send(
    new SetSubscriptionAttributesCommand({
      SubscriptionArn: filteredSubscription,
      AttributeName: "FilterPolicy",
      AttributeValue: filterPolicy,
    }),
  );
  results.subscriptions = {
    queueArns: { wrapped: wrapped.arn, raw: raw.arn, filtered: filtered.arn },
    arns: {
      wrapped: wrappedSubscription,
      raw: rawSubscription,
      filtered: filteredSubscription,
      fifo: fifoSubscription,
    },
    filterPolicySet: filterPolicy,
    rawAttributes: (
      await sns.send(new GetSubscriptionAttributesCommand({ SubscriptionArn: rawSubscription }))
    ).Attributes,
    filteredAttributes: (
      await sns.send(
        new GetSubscriptionAttributesCommand({ SubscriptionArn: filteredSubscription }),
      )
    ).Attributes,
    byTopic: await listAll(ListSubscriptionsByTopicCommand, "Subscriptions", {
      TopicArn: topicArn,
    }),
  };

  step("publish, matching and not matching the filter");
  const red = await sns.send(
    new PublishCommand({
      TopicArn: topicArn,
      Subject: "a red one",
      Message: "red message <&> ✓",
      MessageAttributes: {
        color: { DataType: "String", StringValue: "red" },
        size: { DataType: "Number", StringValue: "42" },
        blob: { DataType: "Binary", BinaryValue: Uint8Array.from([0, 1, 0xfe, 0xff]) },
      },
    }),
  );
  const blue = await sns.send(
    new PublishCommand({
      TopicArn: topicArn,
      Message: "blue message",
      MessageAttributes: { color: { DataType: "String", StringValue: "blue" } },
    }),
  );
  results.publish = { red: red.MessageId, blue: blue.MessageId };

  step("publish a batch");
  const batch = await sns.send(
    new PublishBatchCommand({
      TopicArn: topicArn,
      PublishBatchRequestEntries: [
        {
          Id: "red-batched",
          Message: "batched red",
          MessageAttributes: { color: { DataType: "String", StringValue: "red" } },
        },
        { Id: "plain-batched", Message: "batched plain" },
      ],
    }),
  );
  results.publishBatch = { Successful: batch.Successful ?? [], Failed: batch.Failed ?? [] };

  step("publish to the FIFO topic");
  const fifoPublished = [];
  for (const body of ["first", "second", "third"]) {
    const output = await sns.send(
      new PublishCommand({ TopicArn: fifoTopicArn, Message: body, MessageGroupId: "group" }),
    );
    fifoPublished.push({ MessageId: output.MessageId, SequenceNumber: output.SequenceNumber });
  }
  results.fifoPublish = fifoPublished;

  step("receive the deliveries");
  results.deliveries = {
    wrapped: await drain(wrapped.url, 4),
    raw: await drain(raw.url, 4),
    filtered: await drain(filtered.url, 2),
    fifo: await drain(fifoQueue.url, 3),
  };

  step("topic attributes");
  await sns.send(
    new SetTopicAttributesCommand({
      TopicArn: topicArn,
      AttributeName: "DisplayName",
      AttributeValue: "Renamed",
    }),
  );
  results.topicAttributes = await topicAttributes(topicArn);

  step("topic tags");
  const createdTags = (await sns.send(new ListTagsForResourceCommand({ ResourceArn: topicArn })))
    .Tags;
  await sns.send(
    new TagResourceCommand({
      ResourceArn: topicArn,
      Tags: [
        { Key: "env", Value: "test" },
        { Key: "tier", Value: "1" },
      ],
    }),
  );
  const tagged = (await sns.send(new ListTagsForResourceCommand({ ResourceArn: topicArn }))).Tags;
  await sns.send(new UntagResourceCommand({ ResourceArn: topicArn, TagKeys: ["team", "tier"] }));
  const untagged = (await sns.send(new ListTagsForResourceCommand({ ResourceArn: topicArn })))
    .Tags;
  results.tags = { createdTags, tagged, untagged };

  step("unsubscribe");
  await sns.send(new UnsubscribeCommand({ SubscriptionArn: rawSubscription }));
  await sns.send(new PublishCommand({ TopicArn: topicArn, Message: "after unsubscribe" }));
  results.unsubscribe = {
    byTopic: await listAll(ListSubscriptionsByTopicCommand, "Subscriptions", {
      TopicArn: topicArn,
    }),
    raw: await drain(raw.url, 0),
    wrapped: await drain(wrapped.url, 1),
  };

  step("errors");
  const errorClasses = { NotFoundException, InvalidParameterException, SNSServiceException };
  const unknownTopic = topicArn.replace(/js-events$/, "js-no-such-topic");
  results.errors = {
    publishToUnknownTopic: await failure(
      sns.send(new PublishCommand({ TopicArn: unknownTopic, Message: "lost" })),
      errorClasses,
    ),
    attributesOfUnknownTopic: await failure(
      sns.send(new GetTopicAttributesCommand({ TopicArn: unknownTopic })),
      errorClasses,
    ),
    badFilterPolicy: await failure(
      sns.send(
        new SetSubscriptionAttributesCommand({
          SubscriptionArn: filteredSubscription,
          AttributeName: "FilterPolicy",
          AttributeValue: "{not json",
        }),
      ),
      errorClasses,
    ),
    // One entry Publish would refuse refuses the whole batch, as on AWS: nothing published.
    batchWithAnEmptyMessage: await failure(
      sns.send(
        new PublishBatchCommand({
          TopicArn: topicArn,
          PublishBatchRequestEntries: [
            { Id: "kept-back", Message: "never published" },
            { Id: "empty", Message: "" },
          ],
        }),
      ),
      errorClasses,
    ),
    wrongSecretKey: await failure(
      new SNSClient(clientConfig({ secretAccessKey: "not-the-secret-key" })).send(
        new ListTopicsCommand({}),
      ),
      errorClasses,
    ),
  };

  step("list and delete topics");
  const listedBefore = (await listAll(ListTopicsCommand, "Topics", {})).map((t) => t.TopicArn);
  await sns.send(new DeleteTopicCommand({ TopicArn: topicArn }));
  await sns.send(new DeleteTopicCommand({ TopicArn: fifoTopicArn }));
  results.deleteTopics = {
    listedBefore,
    listedAfter: (await listAll(ListTopicsCommand, "Topics", {})).map((t) => t.TopicArn),
    attributesAfterDelete: await failure(
      sns.send(new GetTopicAttributesCommand({ TopicArn: topicArn })),
      errorClasses,
    ),
  };
  return results;
});
