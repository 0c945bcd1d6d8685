'use strict';
// End-to-end check of the gRPC host from Node.js, run by tests/GrpcHost.Tests (PipelineEndToEndTests):
//   node e2e.js <address> <labelled data file>
// The host runs with --default-task (tiny). This uploads the embedded task's labelled file, then drives
// Train -> Label -> Align -> Evaluate with tiny settings, watching each job's progress stream, labels pairs on the
// streaming labeller and downloads the aligned model. It prints one JSON summary line and exits non-zero on any
// failed check.

const fs = require('fs');
const assert = require('assert/strict');
const { connect, unary, uploadDataset, watchJob, describe, labelStream } = require('./client');

const [address, labelledFile] = process.argv.slice(2);
if (!address || !labelledFile) {
  console.error('usage: node e2e.js <address> <labelled data file>');
  process.exit(2);
}
const c = connect(address);
const tiny = (steps) => ({ args: { maxSteps: steps, perDeviceTrainBatchSize: 8, maxLength: 96, maxPromptLength: 48, loggingSteps: 1 } });

async function run(method, request) {
  const started = await unary(c.jobs, method, request, c.metadata);
  assert.ok(started.jobId.startsWith('job-'), `${method} returned a job id`);
  const events = [];
  const job = await watchJob(c, started.jobId, (e) => { events.push(e); console.error(describe(e)); });
  assert.equal(job.state, 'JOB_STATE_SUCCEEDED', `${method} job ${job.id} ended ${job.state}: ${job.error}`);
  assert.ok(events[0].snapshot, `${method}: the watch starts with a snapshot`);
  const progress = events.filter((e) => e.progress).map((e) => e.progress);
  assert.ok(progress.length > 0, `${method}: progress events arrived on the stream`);
  for (const p of progress) assert.ok(p.totalSteps >= p.step && p.step >= 0, `${method}: step ${p.step} of ${p.totalSteps}`);
  const last = events[events.length - 1];
  assert.equal(last.stateChange && last.stateChange.state, 'JOB_STATE_SUCCEEDED', `${method}: the stream ends with the final state`);
  return { job, progress };
}

const artifact = (job, name) => {
  const a = job.artifacts.find((x) => x.name === name);
  assert.ok(a, `job ${job.id} has artifact '${name}' (has ${job.artifacts.map((x) => x.name).join(', ')})`);
  return a.id;
};

async function main() {
  const summary = {};
  const datasets = (await unary(c.datasets, 'listDatasets', {}, c.metadata)).datasets.map((d) => d.id);
  for (const id of ['default-labelled', 'default-unlabelled', 'default-eval-prompts']) assert.ok(datasets.includes(id), `${id} is registered`);

  // Upload the embedded task's labelled set through the client stream (validated as it arrives).
  const uploaded = await uploadDataset(c, 'e2e-labelled', fs.readFileSync(labelledFile), 'DATASET_FORMAT_UNSPECIFIED', 16 * 1024);
  assert.ok(uploaded.rows > 0);
  summary.uploaded_rows = uploaded.rows;

  const train = await run('train', { baseModelId: 'default-teacher-base', labelledDatasetId: uploaded.id, sft: tiny(2), dpo: tiny(2), outputName: 'e2e-teacher' });
  const stages = new Set(train.progress.map((p) => p.stage));
  assert.ok([...stages].some((s) => s.includes('sft')) && [...stages].some((s) => s.includes('dpo')), `teacher stages: ${[...stages]}`);
  assert.ok(train.progress.some((p) => p.loss !== null && p.loss !== undefined && Number.isFinite(p.loss)), 'training progress carries the loss');
  assert.ok(train.progress.some((p) => Object.keys(p.metrics).some((k) => k.startsWith('rewards/'))), 'DPO progress carries TRL rewards/* metrics');
  const teacher = artifact(train.job, 'teacher');
  summary.teacher = teacher;

  const label = await run('label', { teacherModelId: teacher, unlabelledDatasetId: 'default-unlabelled', batchSize: 16, maxLength: 96, maxPromptLength: 48 });
  const labelledId = artifact(label.job, 'labelled');
  const labelled = await unary(c.datasets, 'getDataset', { datasetId: labelledId }, c.metadata);
  const unlabelled = await unary(c.datasets, 'getDataset', { datasetId: 'default-unlabelled' }, c.metadata);
  assert.equal(labelled.rows, unlabelled.rows, 'every unlabelled pair is labelled (no margin filter)');
  summary.labelled_rows = labelled.rows;
  summary.label_metrics = label.job.metrics;

  const align = await run('align', { baseModelId: 'default-student-base', labelledDatasetId: labelledId, sft: tiny(2), dpo: tiny(2), outputName: 'e2e-student' });
  const student = artifact(align.job, 'model');
  const studentSft = artifact(align.job, 'sft');

  const evaluate = await run('evaluate', {
    models: { sft: studentSft, weak_dpo: student }, promptsDatasetId: 'default-eval-prompts', maxNewTokens: 8, batchSize: 8, seed: 7,
  });
  for (const name of ['sft', 'weak_dpo']) assert.ok(Number.isFinite(evaluate.job.metrics[`gold_reward/${name}`]), `gold_reward/${name}`);
  summary.eval_metrics = evaluate.job.metrics;

  const pairs = [
    { id: 'a', prompt: 'Say hello.', responseA: 'Hello! How can I help you today?', responseB: 'No.' },
    { id: 'b', prompt: 'What is 3+4?', responseA: 'It is 12.', responseB: 'It is 7.' },
    { id: 'c', prompt: 'Name a fruit.', responseA: 'An apple.', responseB: 'A chair.' },
  ];
  const labels = await labelStream(c, teacher, pairs);
  assert.equal(labels.size, pairs.length, 'one streamed label per pair');
  for (const [id, r] of labels) {
    assert.ok(Math.abs(r.margin - (r.rewardA - r.rewardB)) < 1e-6, `${id}: margin = reward_a - reward_b`);
    assert.equal(r.preferred, r.rewardA >= r.rewardB ? 'PREFERENCE_A' : 'PREFERENCE_B', `${id}: preferred follows the rewards`);
  }
  summary.streamed = Object.fromEntries([...labels].map(([id, r]) => [id, { preferred: r.preferred, margin: r.margin }]));

  // The aligned model downloads in the Hugging Face layout, every file matching its SHA-256.
  const files = await new Promise((resolve, reject) => {
    const seen = {};
    const call = c.models.downloadModel({ modelId: student }, c.metadata);
    call.on('data', (chunk) => { seen[chunk.path] = (seen[chunk.path] || 0) + chunk.data.length; });
    call.on('error', reject);
    call.on('end', () => resolve(seen));
  });
  assert.ok(files['config.json'] > 0, 'config.json downloaded');
  assert.ok(Object.keys(files).some((f) => f.endsWith('.safetensors')), 'weights downloaded');
  summary.student_files = Object.keys(files).sort();
  console.log(JSON.stringify(summary));
}

main().then(() => process.exit(0), (err) => {
  console.error(`E2E FAILED: ${err.stack || err.message || err}`);
  process.exit(1);
});
