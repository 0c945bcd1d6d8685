#!/usr/bin/env python3
"""Python client of the WeakTeacher gRPC host (weakteacher.v1) with grpcio.

The stubs are generated from the repository's .proto files by protoc with the gRPC Python plugin into
examples/python/gen (a build folder, not committed):

    examples/generate-stubs.sh python      # protoc + grpc_python_plugin (Debian: protobuf-compiler, protobuf-compiler-grpc)

    python3 client.py [address] [api key] [download folder]     (defaults: 127.0.0.1:50051, $WT_API_KEY, a temp folder)

against `./build.sh serve` (the embedded default task is registered): uploads a small dataset, trains a weak teacher
with tiny settings while watching its progress stream, labels pairs on the streaming labeller and downloads the
trained teacher's policy model, checking each file's SHA-256.
"""
import hashlib
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
GEN = os.environ.get("WT_PYTHON_STUBS", os.path.join(HERE, "gen"))


def load_stubs():
    """Imports grpc and the generated weakteacher.v1 modules, or says exactly what is missing."""
    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError as e:
        sys.exit(f"this client needs grpcio and protobuf (Debian: apt-get install python3-grpcio python3-protobuf; "
                 f"with PyPI: pip install grpcio protobuf); {sys.executable}: {e}")
    if not os.path.isdir(os.path.join(GEN, "weakteacher", "v1")):
        sys.exit(f"no generated stubs in {GEN}: run examples/generate-stubs.sh python")
    sys.path.insert(0, GEN)
    import importlib
    names = ["jobs", "datasets", "models", "labeling", "training"]
    pb = {n: importlib.import_module(f"weakteacher.v1.{n}_pb2") for n in names}
    rpc = {n: importlib.import_module(f"weakteacher.v1.{n}_pb2_grpc") for n in names}
    return pb, rpc


def main():
    pb, rpc = load_stubs()
    import grpc
    import google.protobuf

    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    api_key = (sys.argv[2] if len(sys.argv) > 2 else "") or os.environ.get("WT_API_KEY")
    download_dir = sys.argv[3] if len(sys.argv) > 3 else tempfile.mkdtemp(prefix="wt-model-")
    print(f"python {sys.version.split()[0]}, grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}")
    metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
    channel = grpc.insecure_channel(address)  # grpc.secure_channel(address, grpc.ssl_channel_credentials()) for TLS
    jobs = rpc["jobs"].JobsServiceStub(channel)
    datasets = rpc["datasets"].DatasetsServiceStub(channel)
    models = rpc["models"].ModelsServiceStub(channel)
    labeling = rpc["labeling"].LabelingServiceStub(channel)

    # UploadDataset: the first message carries the metadata, the rest the bytes; a bad row is INVALID_ARGUMENT.
    rows = [{"prompt": "What is 2+2?", "chosen": "4.", "rejected": "5."},
            {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Go away."}]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()

    def upload():
        yield pb["datasets"].UploadDatasetRequest(metadata=pb["datasets"].DatasetMetadata(name="python-upload"))
        for i in range(0, len(data), 64 * 1024):
            yield pb["datasets"].UploadDatasetRequest(data=data[i:i + 64 * 1024])

    dataset = datasets.UploadDataset(upload(), metadata=metadata, timeout=120)
    print(f"UploadDataset: {dataset.id} {dataset.rows} rows")
    if dataset.rows != len(rows):
        sys.exit(f"uploaded {len(rows)} rows, the host counted {dataset.rows}")

    # Train, then WatchJob until it ends.
    tiny = dict(max_steps=4, per_device_train_batch_size=8, max_length=96, max_prompt_length=48)
    tr = pb["training"]
    started = jobs.Train(pb["jobs"].TrainRequest(
        base_model_id="default-teacher-base", labelled_dataset_id="default-labelled",
        sft=tr.SftConfig(args=tr.TrainingArguments(**tiny)), dpo=tr.DpoConfig(args=tr.TrainingArguments(**tiny)),
        output_name="python-teacher"), metadata=metadata, timeout=60)
    print(f"Train: job {started.job_id}")
    progress = 0
    for event in jobs.WatchJob(pb["jobs"].WatchJobRequest(job_id=started.job_id), metadata=metadata, timeout=600):
        kind = event.WhichOneof("event")
        if kind == "progress":
            progress += 1
            p = event.progress
            loss = f" loss={p.loss:.4f}" if p.HasField("loss") else ""
            print(f"  WatchJob: {p.stage} {p.step}/{p.total_steps}{loss} tok/s={p.tokens_per_second:.0f}")
        elif kind == "state_change":
            print(f"  WatchJob: -> {pb['jobs'].JobState.Name(event.state_change.state)} {event.state_change.error}")
    job = jobs.GetJob(pb["jobs"].GetJobRequest(job_id=started.job_id), metadata=metadata, timeout=60)
    if job.state != pb["jobs"].JOB_STATE_SUCCEEDED:
        sys.exit(f"job {job.id} ended {pb['jobs'].JobState.Name(job.state)}: {job.error}")
    if progress == 0:
        sys.exit("WatchJob sent no progress event")
    artifacts = {a.name: a.id for a in job.artifacts}
    teacher = artifacts["teacher"]
    print(f"GetJob: teacher model {teacher}, {progress} progress events")

    # LabelStream: pairs with our own ids; the teacher on the first message.
    pairs = [("p1", "Say hello.", "Hello! How can I help?", "No."),
             ("p2", "What is 3+4?", "It is 12.", "It is 7.")]

    def requests():
        for i, (pid, prompt, a, b) in enumerate(pairs):
            yield pb["labeling"].LabelPairRequest(id=pid, teacher_model_id=teacher if i == 0 else "",
                                                  prompt=prompt, response_a=a, response_b=b)

    labelled = {}
    for r in labeling.LabelStream(requests(), metadata=metadata, timeout=120):
        labelled[r.id] = r
        print(f"LabelStream: {r.id} {pb['labeling'].Preference.Name(r.preferred)} reward_a={r.reward_a:.4f} "
              f"reward_b={r.reward_b:.4f} margin={r.margin:.4f}")
    if sorted(labelled) != sorted(p[0] for p in pairs):
        sys.exit(f"LabelStream answered {sorted(labelled)}")

    # DownloadModel: the trained policy in the Hugging Face layout, every file checked against its SHA-256.
    model_id = artifacts["policy"]
    files, digests = {}, {}
    for chunk in models.DownloadModel(pb["models"].DownloadModelRequest(model_id=model_id), metadata=metadata, timeout=300):
        files.setdefault(chunk.path, bytearray())
        if chunk.offset != len(files[chunk.path]):
            sys.exit(f"{chunk.path}: chunk at offset {chunk.offset}, expected {len(files[chunk.path])}")
        files[chunk.path] += chunk.data
        if chunk.eof:
            digests[chunk.path] = chunk.sha256
    for path, content in files.items():
        if hashlib.sha256(content).hexdigest() != digests.get(path):
            sys.exit(f"{path}: SHA-256 does not match the host's")
        target = os.path.join(download_dir, *path.split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(content)
    if "config.json" not in files or not any(p.endswith(".safetensors") for p in files):
        sys.exit(f"DownloadModel: no config.json/safetensors in {sorted(files)}")
    print(f"DownloadModel: {model_id} {len(files)} files, {sum(map(len, files.values()))} bytes -> {download_dir}")


if __name__ == "__main__":
    main()
