'use strict';
// A small Node.js client of the WeakTeacher gRPC host. It loads the repository's .proto files at run time
// (@grpc/proto-loader), so there is no code generation step.
//
//   node client.js [address] [api key]        (defaults: 127.0.0.1:50051, $WT_API_KEY)
//
// against a host started with `./build.sh serve` (the embedded default task is registered as
// default-teacher-base, default-student-base, default-labelled, default-unlabelled, default-eval-prompts):
// uploads a small dataset, trains a weak teacher on the default labelled set, watches its progress, then labels
// a few pairs on the streaming labeller.

const path = require('path');
const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILES = ['jobs.proto', 'datasets.proto', 'models.proto', 'labeling.proto'].map((f) => `weakteacher/v1/${f}`);

function loadApi() {
  const definition = protoLoader.loadSync(PROTO_FILES, {
    includeDirs: [PROTO_ROOT],
    keepCase: false, // fields in lowerCamelCase: baseModelId, labelledDatasetId, ...
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).weakteacher.v1;
}

/** Clients for every service; `apiKey` is sent as `authorization: Bearer <key>` when given. */
function connect(address = '127.0.0.1:50051', apiKey = process.env.WT_API_KEY) {
  const api = loadApi();
  const credentials = grpc.credentials.createInsecure(); // use grpc.credentials.createSsl() for a TLS host
  const options = { 'grpc.max_receive_message_length': 8 * 1024 * 1024 };
  const metadata = new grpc.Metadata();
  if (apiKey) metadata.set('authorization', `Bearer ${apiKey}`);
  const make = (Service) => new Service(address, credentials, options);
  return {
    api,
    metadata,
    jobs: make(api.JobsService),
    datasets: make(api.DatasetsService),
    models: make(api.ModelsService),
    labeling: make(api.LabelingService),
  };
}

/** A unary call as a promise. */
function unary(client, method, request, metadata, deadlineSeconds = 60) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: Date.now() + deadlineSeconds * 1000 }, (err, reply) => (err ? reject(err) : resolve(reply)));
  });
}

/** Uploads a dataset from a Buffer (or file path) in chunks: metadata first, then bytes. */
function uploadDataset(c, name, content, format = 'DATASET_FORMAT_UNSPECIFIED', chunkSize = 64 * 1024) {
  const bytes = Buffer.isBuffer(content) ? content : fs.readFileSync(content);
  return new Promise((resolve, reject) => {
    const call = c.datasets.uploadDataset(c.metadata, { deadline: Date.now() + 300000 }, (err, reply) => (err ? reject(err) : resolve(reply)));
    call.write({ metadata: { name, format } });
    for (let i = 0; i < bytes.length; i += chunkSize) call.write({ data: bytes.subarray(i, i + chunkSize) });
    call.end();
  });
}

/** Follows a job to its end; `onEvent` sees every event. Resolves with the final Job. */
function watchJob(c, jobId, onEvent = () => {}) {
  return new Promise((resolve, reject) => {
    const stream = c.jobs.watchJob({ jobId }, c.metadata);
    stream.on('data', (e) => onEvent(e));
    stream.on('error', reject);
    stream.on('end', () => unary(c.jobs, 'getJob', { jobId }, c.metadata).then(resolve, reject));
  });
}

/** One line per progress event, as a progress bar would show it. */
function describe(e) {
  if (e.snapshot) return `[${e.jobId}] ${e.snapshot.state}`;
  if (e.stateChange) return `[${e.jobId}] -> ${e.stateChange.state}${e.stateChange.error ? `: ${e.stateChange.error}` : ''}`;
  const p = e.progress;
  const loss = p.loss !== undefined && p.loss !== null ? ` loss=${Number(p.loss).toFixed(4)}` : '';
  const eta = p.etaSeconds !== undefined && p.etaSeconds !== null ? ` eta=${Number(p.etaSeconds).toFixed(0)}s` : '';
  return `[${e.jobId}] ${p.stage} ${p.step}/${p.totalSteps}${loss} tok/s=${Number(p.tokensPerSecond).toFixed(0)}${eta}`;
}

/** Labels pairs on the bidirectional stream; resolves with the responses by id. */
function labelStream(c, teacherModelId, pairs) {
  return new Promise((resolve, reject) => {
    const results = new Map();
    const call = c.labeling.labelStream(c.metadata);
    call.on('data', (r) => results.set(r.id, r));
    call.on('error', reject);
    call.on('end', () => resolve(results));
    pairs.forEach((p, i) => call.write({ id: p.id, teacherModelId: i === 0 ? teacherModelId : '', prompt: p.prompt, responseA: p.responseA, responseB: p.responseB }));
    call.end();
  });
}

module.exports = { loadApi, connect, unary, uploadDataset, watchJob, describe, labelStream };

async function main() {
  const [address, apiKey] = process.argv.slice(2);
  const c = connect(address, apiKey);
  const rows = [
    { prompt: 'What is 2+2?', chosen: '4.', rejected: '5.' },
    { prompt: 'Name a colour.', chosen: 'Blue.', rejected: 'Go away.' },
  ].map((r) => JSON.stringify(r)).join('\n') + '\n';
  const uploaded = await uploadDataset(c, 'example-upload', Buffer.from(rows));
  console.log(`uploaded dataset ${uploaded.id}: ${uploaded.rows} rows (${uploaded.format})`);

  const started = await unary(c.jobs, 'train', {
    baseModelId: 'default-teacher-base',
    labelledDatasetId: 'default-labelled',
    sft: { args: { maxSteps: 4, perDeviceTrainBatchSize: 8 } },
    dpo: { args: { maxSteps: 4, perDeviceTrainBatchSize: 8 } },
    outputName: 'example-teacher',
  }, c.metadata);
  console.log(`training job ${started.jobId}`);
  const job = await watchJob(c, started.jobId, (e) => console.log(describe(e)));
  if (job.state !== 'JOB_STATE_SUCCEEDED') throw new Error(`job ${job.id} ended ${job.state}: ${job.error}`);
  const teacher = job.artifacts.find((a) => a.name === 'teacher');
  console.log(`teacher model ${teacher.id}`);

  const labels = await labelStream(c, teacher.id, [
    { id: 'p1', prompt: 'Say hello.', responseA: 'Hello! How can I help?', responseB: 'No.' },
    { id: 'p2', prompt: 'What is 3+4?', responseA: 'It is 12.', responseB: 'It is 7.' },
  ]);
  for (const [id, r] of labels) console.log(`${id}: ${r.preferred} reward_a=${r.rewardA.toFixed(4)} reward_b=${r.rewardB.toFixed(4)} margin=${r.margin.toFixed(4)}`);
}

if (require.main === module) {
  main().catch((err) => {
    console.error(err.message || err);
    process.exit(1);
  });
}
