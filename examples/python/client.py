#!/usr/bin/env python3
"""Python client of the WeakTeacher gRPC host (weakteacher.v1) with grpcio.

Stubs are generated at run time from the repository's .proto files with grpc_tools (pip install grpcio grpcio-tools)
into a temporary folder, so nothing generated is committed. Without grpc_tools, generate them once yourself:

    python -m grpc_tools.protoc -I ../../protos --python_out=gen --grpc_python_out=gen ../../protos/weakteacher/v1/*.proto

and put `gen` on PYTHONPATH.

    python client.py [address] [api key]          (defaults: 127.0.0.1:50051, $WT_API_KEY)

against `./build.sh serve` (the embedded default task is registered): uploads a small dataset, trains a weak teacher
with tiny settings, watches its progress stream, then labels pairs on the streaming labeller.
"""
import glob
import importlib
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.normpath(os.path.join(HERE, "..", "..", "protos"))


def load_stubs():
    """Generates the weakteacher.v1 modules into a temp folder and imports them."""
    try:
        import grpc  # noqa: F401
        from grpc_tools import protoc
    except ImportError as e:
        sys.exit(f"this example needs grpcio and grpcio-tools (pip install grpcio grpcio-tools): {e}")
    out = tempfile.mkdtemp(prefix="wt-stubs-")
    import importlib.resources  # grpc_tools ships the well-known types (google/protobuf/timestamp.proto)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    protos = sorted(glob.glob(os.path.join(PROTO_ROOT, "weakteacher", "v1", "*.proto")))
    code = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *protos])
    if code != 0:
        sys.exit(f"protoc failed ({code}) on {protos}")
    sys.path.insert(0, out)
    names = ["jobs", "datasets", "models", "labeling", "training"]
    pb = {n: importlib.import_module(f"weakteacher.v1.{n}_pb2") for n in names}
    rpc = {n: importlib.import_module(f"weakteacher.v1.{n}_pb2_grpc") for n in names}
    return pb, rpc


def main():
    import grpc

    address = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    api_key = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("WT_API_KEY")
    pb, rpc = load_stubs()
    metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
    channel = grpc.insecure_channel(address)  # grpc.secure_channel(address, grpc.ssl_channel_credentials()) for TLS
    jobs = rpc["jobs"].JobsServiceStub(channel)
    datasets = rpc["datasets"].DatasetsServiceStub(channel)
    labeling = rpc["labeling"].LabelingServiceStub(channel)

    # Upload: the first message carries the metadata, the rest the bytes; a bad row comes back as INVALID_ARGUMENT.
    rows = [{"prompt": "What is 2+2?", "chosen": "4.", "rejected": "5."},
            {"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Go away."}]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()

    def upload():
        yield pb["datasets"].UploadDatasetRequest(metadata=pb["datasets"].DatasetMetadata(name="python-upload"))
        for i in range(0, len(data), 64 * 1024):
            yield pb["datasets"].UploadDatasetRequest(data=data[i:i + 64 * 1024])

    dataset = datasets.UploadDataset(upload(), metadata=metadata, timeout=120)
    print(f"uploaded dataset {dataset.id}: {dataset.rows} rows")

    tiny = dict(max_steps=4, per_device_train_batch_size=8, max_length=96, max_prompt_length=48)
    tr = pb["training"]
    started = jobs.Train(pb["jobs"].TrainRequest(
        base_model_id="default-teacher-base", labelled_dataset_id="default-labelled",
        sft=tr.SftConfig(args=tr.TrainingArguments(**tiny)), dpo=tr.DpoConfig(args=tr.TrainingArguments(**tiny)),
        output_name="python-teacher"), metadata=metadata, timeout=60)
    print(f"training job {started.job_id}")
    for event in jobs.WatchJob(pb["jobs"].WatchJobRequest(job_id=started.job_id), metadata=metadata):
        kind = event.WhichOneof("event")
        if kind == "progress":
            p = event.progress
            loss = f" loss={p.loss:.4f}" if p.HasField("loss") else ""
            print(f"  {p.stage} {p.step}/{p.total_steps}{loss} tok/s={p.tokens_per_second:.0f}")
        elif kind == "state_change":
            print(f"  -> {pb['jobs'].JobState.Name(event.state_change.state)} {event.state_change.error}")
    job = jobs.GetJob(pb["jobs"].GetJobRequest(job_id=started.job_id), metadata=metadata)
    if job.state != pb["jobs"].JOB_STATE_SUCCEEDED:
        sys.exit(f"job {job.id} ended {pb['jobs'].JobState.Name(job.state)}: {job.error}")
    teacher = next(a.id for a in job.artifacts if a.name == "teacher")
    print(f"teacher model {teacher}")

    pairs = [("p1", "Say hello.", "Hello! How can I help?", "No."),
             ("p2", "What is 3+4?", "It is 12.", "It is 7.")]

    def requests():
        for i, (pid, prompt, a, b) in enumerate(pairs):
            yield pb["labeling"].LabelPairRequest(id=pid, teacher_model_id=teacher if i == 0 else "",
                                                  prompt=prompt, response_a=a, response_b=b)

    for r in labeling.LabelStream(requests(), metadata=metadata, timeout=120):
        print(f"{r.id}: {pb['labeling'].Preference.Name(r.preferred)} reward_a={r.reward_a:.4f} "
              f"reward_b={r.reward_b:.4f} margin={r.margin:.4f}")


if __name__ == "__main__":
    main()
