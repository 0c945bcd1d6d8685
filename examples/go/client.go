// Go client of the WeakTeacher gRPC host (weakteacher.v1): upload a dataset, train a tiny teacher while watching its
// progress, label pairs on the streaming labeller, download the trained policy model (SHA-256 of every file checked).
//
// GOPATH mode with Debian's Go packages (golang-go, golang-google-grpc-dev, golang-goprotobuf-dev, protobuf-compiler):
//
//	examples/generate-stubs.sh go     # stubs into examples/go/gopath/src/<go_package of the protos>
//	GO111MODULE=off GOPATH=$PWD/examples/go/gopath:/usr/share/gocode go build -o examples/go/wt-client examples/go/client.go
//	examples/go/wt-client [address] [api key] [download folder]   (defaults: 127.0.0.1:50051, $WT_API_KEY, a temp folder)
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/ioutil"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	wt "github.com/weakteacher/weakteacher-native/gen/go/weakteacher/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func arg(i int, fallback string) string {
	if len(os.Args) > i && os.Args[i] != "" {
		return os.Args[i]
	}
	return fallback
}

func main() {
	address := arg(1, "127.0.0.1:50051")
	apiKey := arg(2, os.Getenv("WT_API_KEY"))
	downloadDir := arg(3, "")
	if downloadDir == "" {
		d, err := ioutil.TempDir("", "wt-model-")
		if err != nil {
			fail("temp folder: %v", err)
		}
		downloadDir = d
	}
	fmt.Printf("go %s, grpc-go %s\n", runtime.Version(), grpc.Version)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if apiKey != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+apiKey)
	}
	conn, err := grpc.DialContext(ctx, address, grpc.WithInsecure(), grpc.WithBlock()) // grpc.WithTransportCredentials(credentials.NewTLS(...)) for TLS
	if err != nil {
		fail("connect %s: %v", address, err)
	}
	defer conn.Close()
	jobs := wt.NewJobsServiceClient(conn)
	datasets := wt.NewDatasetsServiceClient(conn)
	models := wt.NewModelsServiceClient(conn)
	labeling := wt.NewLabelingServiceClient(conn)

	// UploadDataset: metadata first, then the bytes.
	rows := "{\"prompt\": \"What is 2+2?\", \"chosen\": \"4.\", \"rejected\": \"5.\"}\n" +
		"{\"prompt\": \"Name a colour.\", \"chosen\": \"Blue.\", \"rejected\": \"Go away.\"}\n"
	up, err := datasets.UploadDataset(ctx)
	if err != nil {
		fail("UploadDataset: %v", err)
	}
	if err := up.Send(&wt.UploadDatasetRequest{Payload: &wt.UploadDatasetRequest_Metadata{Metadata: &wt.DatasetMetadata{Name: "go-upload"}}}); err != nil {
		fail("UploadDataset: %v", err)
	}
	if err := up.Send(&wt.UploadDatasetRequest{Payload: &wt.UploadDatasetRequest_Data{Data: []byte(rows)}}); err != nil {
		fail("UploadDataset: %v", err)
	}
	dataset, err := up.CloseAndRecv()
	if err != nil {
		fail("UploadDataset: %v", err)
	}
	fmt.Printf("UploadDataset: %s %d rows\n", dataset.Id, dataset.Rows)
	if dataset.Rows != 2 {
		fail("uploaded 2 rows, the host counted %d", dataset.Rows)
	}

	// Train, then WatchJob until it ends.
	tiny := func() *wt.TrainingArguments {
		return &wt.TrainingArguments{MaxSteps: 4, PerDeviceTrainBatchSize: 8, MaxLength: 96, MaxPromptLength: 48}
	}
	started, err := jobs.Train(ctx, &wt.TrainRequest{
		BaseModelId: "default-teacher-base", LabelledDatasetId: "default-labelled",
		Sft: &wt.SftConfig{Args: tiny()}, Dpo: &wt.DpoConfig{Args: tiny()}, OutputName: "go-teacher",
	})
	if err != nil {
		fail("Train: %v", err)
	}
	fmt.Printf("Train: job %s\n", started.JobId)
	watch, err := jobs.WatchJob(ctx, &wt.WatchJobRequest{JobId: started.JobId})
	if err != nil {
		fail("WatchJob: %v", err)
	}
	progress := 0
	for {
		e, err := watch.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			fail("WatchJob: %v", err)
		}
		if p := e.GetProgress(); p != nil {
			progress++
			fmt.Printf("  WatchJob: %s %d/%d loss=%.4f tok/s=%.0f\n", p.Stage, p.Step, p.TotalSteps, p.Loss, p.TokensPerSecond)
		} else if s := e.GetStateChange(); s != nil {
			fmt.Printf("  WatchJob: -> %s %s\n", s.State, s.Error)
		}
	}
	job, err := jobs.GetJob(ctx, &wt.GetJobRequest{JobId: started.JobId})
	if err != nil {
		fail("GetJob: %v", err)
	}
	if job.State != wt.JobState_JOB_STATE_SUCCEEDED {
		fail("job %s ended %s: %s", job.Id, job.State, job.Error)
	}
	if progress == 0 {
		fail("WatchJob sent no progress event")
	}
	artifacts := map[string]string{}
	for _, a := range job.Artifacts {
		artifacts[a.Name] = a.Id
	}
	teacher := artifacts["teacher"]
	fmt.Printf("GetJob: teacher model %s, %d progress events\n", teacher, progress)

	// LabelStream: our own ids; the teacher on the first message.
	stream, err := labeling.LabelStream(ctx)
	if err != nil {
		fail("LabelStream: %v", err)
	}
	pairs := []*wt.LabelPairRequest{
		{Id: "g1", TeacherModelId: teacher, Prompt: "Say hello.", ResponseA: "Hello! How can I help?", ResponseB: "No."},
		{Id: "g2", Prompt: "What is 3+4?", ResponseA: "It is 12.", ResponseB: "It is 7."},
	}
	for _, p := range pairs {
		if err := stream.Send(p); err != nil {
			fail("LabelStream: %v", err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		fail("LabelStream: %v", err)
	}
	var ids []string
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			fail("LabelStream: %v", err)
		}
		ids = append(ids, r.Id)
		fmt.Printf("LabelStream: %s %s reward_a=%.4f reward_b=%.4f margin=%.4f\n", r.Id, r.Preferred, r.RewardA, r.RewardB, r.Margin)
	}
	sort.Strings(ids)
	if strings.Join(ids, ",") != "g1,g2" {
		fail("LabelStream answered %v", ids)
	}

	// DownloadModel: every file checked against the SHA-256 on its last chunk.
	modelID := artifacts["policy"]
	download, err := models.DownloadModel(ctx, &wt.DownloadModelRequest{ModelId: modelID})
	if err != nil {
		fail("DownloadModel: %v", err)
	}
	files := map[string][]byte{}
	total := 0
	for {
		c, err := download.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			fail("DownloadModel: %v", err)
		}
		if c.Offset != int64(len(files[c.Path])) {
			fail("%s: chunk at offset %d, expected %d", c.Path, c.Offset, len(files[c.Path]))
		}
		files[c.Path] = append(files[c.Path], c.Data...)
		total += len(c.Data)
		if c.Eof {
			sum := sha256.Sum256(files[c.Path])
			if hex.EncodeToString(sum[:]) != c.Sha256 {
				fail("%s: SHA-256 does not match the host's", c.Path)
			}
			target := filepath.Join(downloadDir, filepath.FromSlash(c.Path))
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				fail("%v", err)
			}
			if err := ioutil.WriteFile(target, files[c.Path], 0o644); err != nil {
				fail("%v", err)
			}
		}
	}
	if _, ok := files["config.json"]; !ok {
		fail("DownloadModel: no config.json in the download")
	}
	fmt.Printf("DownloadModel: %s %d files, %d bytes -> %s\n", modelID, len(files), total, downloadDir)
}
