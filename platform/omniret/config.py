"""Configuration: pydantic models with defaults in code, YAML files for runs, ``a.b=c`` overrides.

Every section forbids unknown keys, so a typo in a YAML file or an override is an error that names
the key instead of a silently ignored setting. The same object travels to Ray workers with
``model_dump()`` / ``model_validate()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from omniret.errors import ConfigError

Family = Literal["auto", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RematchConfig(Section):
    """ReMatch (METHODS §6): K learnable tokens give the embedding; train.objective=rematch trains them."""

    tokens: int = Field(0, ge=0, le=1024, description="K learnable tokens appended to every input, created when "
                        "training starts without saved ones (the paper: 16). 0: use the checkpoint's, if any.")
    path: str | None = Field(None, description="Folder of saved tokens (omniret_rematch.json); None: the "
                             "adapter's folder or the checkpoint's own, if any.")
    mlp_hidden: int | None = Field(None, ge=1, description="Width of the MLP mapping E* back to the input "
                                   "space (None: the hidden size).")
    orth_weight: float = Field(0.5, ge=0, description="Weight of L_orth in L = L_cl + w_o L_orth + w_q L_qdm.")
    qdm_weight: float = Field(0.1, ge=0, description="Weight of L_qdm (multi-view yes/no matching).")
    packed: bool = Field(True, description="Each sample's 8 matching views in one sequence with a block attention "
                         "mask (true), or as 8 rows of a batch (false); the loss is the same.")


class ModelConfig(Section):
    """Which checkpoint to load and how to run it."""

    path: str | None = Field(
        None, description="Local HF checkpoint directory (Qwen2-VL, Qwen2.5-VL, Qwen3-VL). "
        "None builds (once) and uses the tiny offline model under `tiny_dir`.")
    family: Family = Field("auto", description="Model family; auto reads config.json's model_type.")
    adapter: str | None = Field(None, description="PEFT adapter directory applied on top of `path`.")
    head: str | None = Field(None, description="Folder of a TTE_u embedding head (omniret_head.json) used on "
                             "top of `path`; None: the one saved in `path`, if any.")
    head_layers: int = Field(8, ge=1, description="Backbone layers copied into a new TTE_u embedding head when "
                             "training with train.mode=head (METHODS 7.2: 8).")
    tiny_family: Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl"] = "qwen2_vl"
    tiny_dir: str = ".omniret/models/tiny"
    tiny_preset: Literal["tiny", "mid", "small", "30m", "150m"] = Field(
        "tiny", description="Sizes of the built model (omniret.models.tiny.PRESETS); give each its own tiny_dir.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on CUDA, float32 on CPU.")
    device: str = Field("auto", description="auto: cuda if available, else cpu.")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto", description="auto: flash_attention_2 on CUDA when installed, else sdpa.")
    template: str = Field("qwen3_vl_embedding", description="Prompt template name (omniret.models.prompts).")
    pooling: Literal["auto", "last", "mean"] = Field(
        "auto", description="Embedding read-out: last attended token, or the mean of the attended tokens "
        "(SAIL). auto: what the checkpoint recorded (omniret_embedding.json), else last.")
    max_length: int = Field(8192, ge=16, description="Token limit of one embedded item.")
    seed: int = 0
    rematch: RematchConfig = Field(default_factory=RematchConfig, description="ReMatch learnable tokens.")
    reasoning: Literal["none", "query", "target", "both"] = Field(
        "none", description="Think-Then-Embed (TTE_t): render ECR after the input on the query side, the "
        "target side or both; texts come from `reasoning_from`.")
    reasoning_from: list[str] = Field(default_factory=list, description="ECR files or folders "
                                      "(`omniret reason` output: <out>/ecr.jsonl), looked up by content hash.")
    reasoning_reasoner: str | None = Field(None, description="Use only ECR of this reasoner id.")
    reasoning_template: str | None = Field(None, description="Use only ECR of this template id.")


class MediaConfig(Section):
    """Pixel, frame and token budgets; limits that protect the process from hostile inputs."""

    min_pixels: int = Field(4 * 28 * 28, ge=1, description="Lower bound of an image's resized area.")
    max_pixels: int = Field(1280 * 28 * 28, ge=1, description="Upper bound of an image's resized area.")
    video_frames: int | None = Field(8, ge=1, description="Fixed frame count per video (None: use fps).")
    video_fps: float = Field(1.0, gt=0, description="Sampling rate when video_frames is None.")
    video_max_frames: int = Field(64, ge=1)
    video_max_pixels: int = Field(160 * 28 * 28, ge=1, description="Upper bound of one frame's area.")
    video_total_pixels: int = Field(
        8192 * 28 * 28, ge=1, description="Upper bound of all frames together; frames shrink to fit.")
    clip_seconds: float | None = Field(
        None, gt=0, description="Cut videos longer than this into clips of this length (ingest).")
    pdf_dpi: int = Field(100, ge=36, le=600)
    pdf_text_chars: int = Field(2000, ge=0, description="Characters of a page's text kept with it.")
    max_file_bytes: int = Field(200 * 2**20, ge=1, description="Files larger than this are refused.")
    max_image_pixels: int = Field(
        64 * 2**20, ge=1, description="Decoded image area above which an image is refused.")
    max_video_frame_pixels: int = Field(
        3840 * 2160, ge=1, description="Video frame area above which a video is refused, read from the "
        "container header before decoding.")

    @model_validator(mode="after")
    def _check_order(self) -> MediaConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels")
        return self


class EmbedConfig(Section):
    """Batching of the embedder."""

    batch_tokens: int = Field(16384, ge=1, description="Token budget of one batch (padded length x rows).")
    max_batch_size: int = Field(64, ge=1)
    dimensions: int | None = Field(None, ge=1, description="Matryoshka: keep this many leading dims.")
    progress: bool = True


class RerankConfig(Section):
    """The yes/no reranker: its own checkpoint, prompt limits, and how a reranker stage trains it."""

    model: ModelConfig = Field(
        default_factory=ModelConfig, description="The reranker's checkpoint (path, adapter, family, dtype, "
        "device); the tiny model when path is unset. `template` is not used: the reranker has its own prompt.")
    instruction: str = "Given a search query, retrieve relevant candidates that answer the query."
    max_length: int = Field(10240, ge=32)
    batch_size: int = Field(8, ge=1)
    loss: Literal["pointwise", "listwise"] = Field(
        "pointwise", description="Reranker training: pointwise yes/no cross-entropy (Qwen3-VL-Reranker) or a "
        "softmax over one positive and its negatives.")
    init_from_embedder: bool = Field(
        False, description="A reranker stage starts from its embedder (`model`, i.e. train.init_from's output) "
        "instead of rerank.model.")
    in_batch_negatives: int = Field(
        0, ge=0, description="Reranker training: also pair each query with this many other rows' positives "
        "of the same batch, labelled no (besides train.negatives explicit hard negatives).")


class LoraConfig(Section):
    """LoRA on every linear layer of the language model and (optionally) the vision tower."""

    r: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field(
        "all-linear", description="'all-linear' or a list of module-name suffixes (q_proj, ...).")
    include_vision: bool = Field(True, description="Also adapt the vision tower and merger.")


class IngestConfig(Section):
    """Ingestion into the index: which files, how the Ray Data pipeline is sized, when to give up."""

    sources: list[str] = Field(
        default_factory=list, description="Folders, files, globs (** recurses), URIs (s3://, gs://, "
        "file://) or @list.txt files naming one source per line.")
    prune: bool = Field(False, description="Remove rows of files under the sources that no longer exist.")
    include_hidden: bool = Field(False, description="Also ingest files and folders whose name starts with '.'.")
    thumbnail_px: int = Field(192, ge=16, le=1024, description="Longest side of the stored JPEG thumbnail.")
    files_per_task: int = Field(4, ge=1, description="Files one decoding task reads, hashes and expands.")
    decode_memory_mb: int = Field(
        512, ge=1, description="Memory reserved per decoding task (Ray scheduling; also keeps the "
        "decoding tasks out of the embedder actors).")
    embed_actors: int = Field(1, ge=1, description="Embedder actors (one model copy each).")
    embed_batch_rows: int = Field(32, ge=1, description="Rows handed to an embedder actor per call; "
                                  "the actor splits them by embed.batch_tokens.")
    embed_cpus: float = Field(1.0, ge=0)
    embed_gpus: float = Field(0.0, ge=0)
    isolate_decoding: bool = Field(
        True, description="Decode each batch of files in a child Ray task, so that a native crash (a "
        "segfault, an OOM kill) fails only the files it was decoding (they are retried one per task and "
        "the culprit is reported); false decodes inside the Ray Data task, which Ray Data retries without "
        "limit when its process dies, so a file that always crashes its decoder stalls the run.")
    writers: int = Field(1, ge=1, description="Table writer actors: few, so commits rarely conflict.")
    write_batch_rows: int = Field(512, ge=1, description="Rows per commit (large batches, few versions).")
    max_failed_files: int | None = Field(
        None, ge=0, description="Stop the run (exit code 3) once more files than this have failed; "
        "checked as results arrive, i.e. after each writer batch.")
    ray_num_cpus: int | None = Field(
        None, ge=1, description="CPUs of a Ray instance started locally (None: the CPUs this process may use).")


class IndexConfig(Section):
    """Where the LanceDB table lives and how its indexes are kept up."""

    uri: str = Field(".omniret/lancedb", description="LanceDB database: a local folder or s3://, gs:// URI.")
    table: str = "items"
    errors_table: str = "ingest_errors"
    storage_options: dict[str, str] = Field(default_factory=dict, description="Object-store credentials etc.")
    vector_index: Literal["ivf_pq", "ivf_sq", "hnsw_sq"] = Field(
        "ivf_pq", description="ivf_pq: product-quantised codes; ivf_sq: one int8 per dimension (at 1M rows the "
        "best recall/latency in docs/BENCHMARKS.md, 'Vector search at scale'); hnsw_sq: HNSW graphs over int8.")
    vector_index_min_rows: int = Field(
        100_000, ge=256, description="Below this many rows search is exact (flat); above, an ANN index.")
    num_partitions: int | None = Field(None, ge=1, description="IVF partitions (None: rows / 4096, HNSW: rows / 1M).")
    num_sub_vectors: int | None = Field(
        None, ge=1, description="PQ sub-vectors (None: dim/2 up to 128-d, dim/4 up to 512-d, else dim/8).")
    reindex_fraction: float = Field(
        0.1, gt=0, le=1, description="Optimize the indexes once this fraction of rows is not indexed.")
    nprobes: int = Field(20, ge=1, description="IVF partitions searched per query.")
    refine_factor: int | None = Field(
        10, ge=1, description="Re-rank refine_factor * k ANN candidates with exact distances (PQ codes "
        "alone rank near neighbours poorly); None: off.")
    read_consistency_s: float | None = Field(
        5.0, ge=0, description="How often a reader checks for new data (0: every read; None: never).")
    multivector: Literal["none", "tokens"] = Field(
        "none", description="tokens: ingest also stores K vectors per item (column `multivector`) for "
        "MaxSim (late-interaction) search beside the pooled vector.")
    multivector_k: int = Field(8, ge=1, le=256, description="Vectors per item in the multivector column.")
    multivector_source: Literal["segments", "last", "rematch"] = Field(
        "segments", description="How the K vectors are read from the last hidden states: means of K equal runs "
        "of the input's positions, the last K positions (omniret.models.multivector), or the K ReMatch token "
        "states of a model with `model.rematch` tokens (K must equal their number).")


class SyntheticConfig(Section):
    """The generated benchmark (omniret.data.synthetic): sizes, seed, held-out combinations."""

    seed: int = 0
    train_per_task: int = Field(200, ge=1, description="Training pairs per generated dataset.")
    eval_queries: int = Field(50, ge=1, description="Evaluation queries per generated dataset (at most).")
    candidates: int = Field(8, ge=2, description="Candidates per query in candidate-list tasks.")
    train_negatives: int = Field(1, ge=0, description="Explicit hard negatives per training pair.")
    held_out: int = Field(4, ge=1, le=15, description="Colour x shape combinations kept for evaluation only.")
    image_size: int = Field(84, ge=56, le=224, description="Scene pictures are image_size x image_size.")
    video_size: int = Field(84, ge=56, le=224)
    video_frames: int = Field(8, ge=2, le=64)
    pages_per_doc: int = Field(4, ge=2, le=20, description="Pages per generated PDF (one overview page).")
    tasks: list[str] = Field(default_factory=list, description="Generated datasets to write (empty: all).")


class DataConfig(Section):
    """Training pairs: where they are, how datasets are capped, weighted and merged."""

    train: list[str] = Field(default_factory=list, description="Pair files or folders (jsonl, json, parquet).")
    root: str | None = Field(None, description="Root of relative media paths (default: next to each file).")
    max_per_dataset: int | None = Field(100_000, ge=1, description="Cap on pairs per dataset (RzenEmbed: 100k).")
    caps: dict[str, int] = Field(default_factory=dict, description="Per-dataset caps, overriding the default.")
    weights: dict[str, float] = Field(
        default_factory=dict, description="Sampling weight multipliers by dataset, merged group or task group.")
    weighting: Literal["size", "uniform"] = Field(
        "size", description="Base probability of a dataset: its size, or equal for all.")
    merge_classification: bool = Field(True, description="Merge image-classification datasets into one.")
    seed: int = 0
    synthetic: SyntheticConfig = SyntheticConfig()


class EvalConfig(Section):
    """Evaluation on MMEB-layout data (the generated benchmark or real MMEB-V1/V2)."""

    root: str = Field(".omniret/benchmark/eval", description="Evaluation folder (benchmark.json or MMEB layout).")
    annotations: str | None = Field(
        None, description="Folder of MMEB image-task annotation files (parquet/jsonl per dataset), when "
        "they are not under root/image-tasks.")
    datasets: list[str] = Field(default_factory=list, description="Datasets to evaluate (empty: all found).")
    max_queries: int | None = Field(None, ge=1, description="Evaluate at most this many queries per dataset.")
    out: str | None = Field(None, description="Folder for report.json and report.md (None: not written).")
    baselines: list[Literal["text_overlap", "chance"]] = ["text_overlap", "chance"]
    ties: Literal["expected", "pessimistic"] = Field(
        "expected", description="Equal scores: expected metric over random tie order, or worst case.")
    rerank_top_k: int = Field(
        0, ge=0, description="Also rerank the embedder's top k candidates of every query with the reranker "
        "(rerank.model) and report hit@1 and nDCG@5 before and after (0: off).")
    ray: bool | Literal["auto"] = Field("auto", description="Embed through Ray Data (auto: for large runs).")
    ray_min_items: int = Field(5000, ge=1, description="auto: use Ray Data from this many items to embed.")
    actors: int = Field(1, ge=1, description="Embedder actors of the Ray Data path.")
    batch_rows: int = Field(32, ge=1, description="Items per embedder actor call.")
    ray_num_cpus: int | None = Field(
        None, ge=1, description="CPUs of a Ray instance started locally (None: the CPUs this process may use).")
    ume_modes: list[Literal["disc", "gen", "auto"]] = Field(
        default_factory=list, description="UME-R1 checkpoint: score each of these embedding modes and compare "
        "them per task group with latency per item (empty: the ordinary embedder).")


class DeploymentConfig(Section):
    """Replicas and resources of one Ray Serve deployment."""

    num_replicas: int | Literal["auto"] = Field(1, description="A count, or auto (use autoscaling).")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(4.0, gt=0, description="Autoscaling target per replica.")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    max_batch_size: int = Field(16, ge=1, description="Requests merged into one @serve.batch call.")
    batch_wait_timeout_s: float = Field(0.01, ge=0)

    def options(self, default_ongoing: int | None = None) -> dict:
        """Keyword arguments for ``Deployment.options``."""
        out: dict = {"ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
                     # Serve queues at most this many requests on a replica; it must admit a full batch.
                     "max_ongoing_requests": default_ongoing or 2 * self.max_batch_size}
        if self.num_replicas == "auto":
            out["autoscaling_config"] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                         "target_ongoing_requests": self.target_ongoing_requests}
        else:
            out["num_replicas"] = self.num_replicas
        return out


class ServeConfig(Section):
    """The HTTP service: where it listens, what it accepts, how its deployments scale."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    app_name: str = "omniret"
    api_key: str | None = Field(None, description="Bearer token required on every endpoint but /healthz "
                                "(also read from OMNIRET_API_KEY).")
    max_request_bytes: int = Field(32 * 2**20, ge=1024)
    max_inputs: int = Field(64, ge=1, description="Inputs (or documents) in one request.")
    max_text_chars: int = Field(20_000, ge=1)
    max_video_seconds: float = Field(600.0, gt=0)
    max_video_frames: int = Field(64, ge=1, description="Largest num_frames a request may ask for.")
    allowed_roots: list[str] = Field(default_factory=list, description="Folders whose files requests may "
                                     "name by path (empty: no server-side paths).")
    allowed_types: list[Literal["image", "video", "pdf"]] = ["image", "video", "pdf"]
    upload_dir: str = Field(".omniret/uploads", description="Where files ingested through the API are kept.")
    rerank_candidates: int = Field(50, ge=1, description="Most vector hits a search may rerank.")
    # Work bounds, checked from headers before anything is decoded.
    max_parts: int = Field(16, ge=1, description="Content parts in one input.")
    max_images: int = Field(8, ge=1, description="Images in one input.")
    max_request_visuals: int = Field(64, ge=1, description="Images, videos and PDF pages in one request.")
    max_request_pixels: int = Field(
        64 * 2**20, ge=1, description="Source pixels one request may decode: image sizes from their headers, "
        "sampled video frames x the declared frame size, PDF pages at media.pdf_dpi.")
    max_batch_pixels: int = Field(
        128 * 2**20, ge=1, description="Source pixels a model replica decodes at once; a dynamic batch over "
        "it is decoded and embedded in turns.")
    max_instruction_chars: int = Field(2000, ge=1)
    request_timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for a model call (and an HTTP request) before a 504/408.")
    health_timeout_s: float = Field(5.0, gt=0, description="How long /healthz waits for each model replica.")
    embedder: DeploymentConfig = DeploymentConfig()
    reranker: DeploymentConfig = DeploymentConfig(max_batch_size=8)
    ingress: DeploymentConfig = DeploymentConfig(num_cpus=0.5)
    # Reasoning (Think-Then-Embed) on /v1/embeddings and /search.
    reasoner_enabled: bool = Field(False, description="Deploy a reasoner (checkpoint and decoding: `reason.*`) "
                                   "so that requests may ask for reasoning=generate.")
    reasoner: DeploymentConfig = Field(DeploymentConfig(max_batch_size=8),
                                       description="The reasoner deployment (only with reasoner_enabled).")
    max_reasoning_chars: int = Field(8000, ge=1, description="Longest reasoning_text a request may send "
                                     "(reasoning=provided).")


class LossConfig(Section):
    """The contrastive loss, built by name from the loss registry (omniret.losses)."""

    name: str = Field("infonce", description="infonce, dcl, rzen, llave, qwen3vl, e5omni, qqmm_ega or distill.")
    temperature: float = Field(0.02, gt=0, description="Cosine temperature (the initial value when learned).")
    options: dict[str, Any] = Field(
        default_factory=dict, description="Further keyword arguments of the loss, e.g. {alpha: 9, "
        "fn_threshold: 0.95, task_temperature: true} for rzen or {learn_temperature: true}.")
    matryoshka_dims: list[int] | None = Field(None, description="Also train these leading dimensions.")
    mask_duplicates: bool = Field(
        True, description="An in-batch target identical to a row's positive counts as a positive, not a "
        "negative (losses that accept a positive mask); matters for label-like targets.")


class TrainConfig(Section):
    """Contrastive training on Ray Train: scale, what is trained, schedule, batching, checkpoints, evaluation."""

    name: str = Field("run", description="Run name: the folder under output_dir; running it again resumes it.")
    objective: Literal["contrastive", "rerank", "merge", "ume_sft", "ume_grpo", "rematch", "reason_sft"] = Field(
        "contrastive", description="contrastive: train the embedder (`model`); rerank: train the yes/no reranker "
        "(`rerank.model`) on the same pairs, `model` being the embedder that retrieves for its evaluation; "
        "reason_sft: fine-tune the reasoner (`reason.model`) on stored ECR (`reason.sft_from`), TTE_s; "
        "merge (a recipe stage, no training): merge `merge.checkpoints` (default: the last two embedder "
        "stages' outputs) into this stage's final/ and evaluate it; ume_sft: UME-R1's SFT of `model` (disc + gen "
        "contrastive + next-token loss on teacher CoT, section `ume`); ume_grpo: UME-R1's GRPO on the "
        "generative embedding (section `grpo`); rematch: ReMatch's L_cl + L_orth + L_qdm (model.rematch).")
    output_dir: str = Field(".omniret/runs", description="Where runs live (shared storage on multi-node).")
    init_from: str | None = Field(
        None, description="Start from a previous stage: its run folder (final/ is used) or a checkpoint folder.")
    workers: int = Field(1, ge=1, description="Ray Train workers (DDP ranks).")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    resources_per_worker: dict[str, float] = Field(default_factory=dict, description="Extra Ray resources.")
    torch_threads: int | None = Field(None, ge=1, description="Torch CPU threads per worker (None: cpus_per_worker).")
    max_failures: int = Field(0, ge=-1, description="Worker failures to recover from (-1: always).")
    num_to_keep: int | None = Field(2, ge=1, description="Checkpoints kept (None: all).")
    mode: Literal["lora", "full", "head"] = Field(
        "lora", description="lora: train adapters (pretrained backbones); full: every parameter (the tiny model); "
        "head: a TTE_u embedding head (model.head_layers) on a frozen backbone.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations (non-reentrant).")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU.")
    epochs: int = Field(1, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1, description="None: pairs in the mixture / batch_size.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps (None: all epochs).")
    batch_size: int = Field(32, ge=2, description="Global batch (all workers); each worker gets its share.")
    gradcache: bool = Field(True, description="GradCache steps (chunked; exact full-batch gradient).")
    query_chunk_size: int = Field(8, ge=1)
    target_chunk_size: int = Field(8, ge=1)
    lr: float = Field(2e-4, gt=0)
    temperature_lr: float | None = Field(None, gt=0, description="Learning rate of learnable temperatures.")
    weight_decay: float = Field(0.05, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Linear warmup over this share of the steps.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine decay ends at lr * min_lr_ratio.")
    max_grad_norm: float | None = Field(1.0, gt=0)
    homogeneous: bool = Field(True, description="Every batch from one dataset (merged classification counts as one).")
    curriculum: Literal["none", "pyramid"] = Field(
        "none", description="pyramid: GVE modality pyramid, tasks sampled by softmax(alignment / sigma).")
    sigma_min: float = Field(0.1, gt=0)
    sigma_max: float = Field(1.0, gt=0)
    probe_pairs: int = Field(16, ge=1, description="Pairs per task probed at each pyramid decision.")
    probe_every: int | None = Field(
        None, ge=1, description="Steps between pyramid decisions (re-probe; sigma follows the step). None: every "
        "epoch start and at least 3 decisions per run.")
    batching: Literal["random", "b3"] = Field(
        "random", description="random: seeded permutations of each group; b3: batches of |B|/K METIS "
        "communities of mutual hard negatives, built with the stage's starting model (homogeneous only).")
    b3_community: int = Field(8, ge=1, description="b3: community size K (batch_size should be a multiple).")
    b3_skip: int = Field(30, ge=0, description="b3: top ranks p skipped per query (likely false negatives).")
    b3_neighbours: int = Field(100, ge=1, description="b3: ranks m kept after the skipped ones.")
    b3_file: str | None = Field(None, description="b3: communities file (default: <run>/b3.json, built "
                                "before the stage trains).")
    negatives: int = Field(0, ge=0, description="Explicit hard negatives per query taken from the pairs.")
    cache_mb: float = Field(0, ge=0, description="Keep encoded items (pixels, tokens) for later epochs, up to "
                            "this many MB per worker (0: decode every time).")
    instructions: bool = Field(True, description="Keep task instructions (false: stage-1 style, none).")
    seed: int = 0
    checkpoint_every: int = Field(50, ge=0, description="Steps between checkpoints (0: only at the end).")
    eval_every: int = Field(0, ge=0, description="Steps between evaluations (0: none during training).")
    eval_at_end: bool = True
    eval_max_queries: int | None = Field(
        None, ge=1, description="Queries per dataset in the evaluations during training (end: eval.max_queries).")
    log_every: int = Field(10, ge=1, description="Console lines every this many steps (the CSV gets every step).")


class MineConfig(Section):
    """Hard-negative mining with a checkpoint: per-query rank skipping or a Qwen3-VL-style score threshold."""

    before_training: bool = Field(False, description="In a recipe: mine this stage's pairs with the previous "
                                  "stage's model first, then train on the mined pairs.")
    out: str | None = Field(None, description="Folder for the mined pair files (default: <run>/mined).")
    method: Literal["skip_top", "threshold", "f1"] = Field(
        "skip_top", description="skip_top: skip the top ranks, keep the next top_k (B3's rule per query; B3 "
        "batches are train.batching=b3); threshold: below the positive + margin (Qwen3-VL); f1: below the "
        "dataset's F1-optimal threshold (SAIL).")
    top_k: int = Field(3, ge=1, description="Hard negatives kept per query.")
    skip_top: int = Field(30, ge=0, description="skip_top: non-positive ranks skipped first (likely false negatives).")
    margin: float = Field(0.0, description="threshold: skip candidates scoring above the positive + margin.")
    min_positive: float | None = Field(
        None, description="t+ (Qwen3-VL): keep a query only if some positive scores above this (None: all).")
    unconfident: Literal["drop", "keep"] = Field(
        "drop", description="A query failing min_positive: left out of the mined files, or kept unchanged.")
    keep_existing: bool = Field(False, description="Append mined negatives to the pair's own instead of replacing.")
    ray: bool = Field(False, description="Embed with Ray Data actors instead of in this process.")
    actors: int = Field(1, ge=1)


class ReasonConfig(Section):
    """The reasoner (Think-Then-Embed ECR): its checkpoint, decoding, and the job that stores the ECR."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="The reasoner's checkpoint "
                               "(any Qwen-VL; None path: the tiny offline model).")
    template: str = Field("auto", description="Reasoner prompt (omniret.reasoning.templates): qa, visdoc, "
                          "grounding, retrieval, video, or auto (by each item's task group).")
    max_new_tokens: int = Field(256, ge=1, description="Generation limit; an unclosed <think> is cut here "
                                "and recorded as truncated.")
    do_sample: bool = Field(False, description="false: greedy (deterministic); true: sampled with temperature/top_p.")
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    seed: int = Field(0, description="Seed of sampled decoding (per batch, from the seed and the batch's keys).")
    batch_size: int = Field(8, ge=1, description="Items per generate call (left-padded).")
    max_length: int = Field(4096, ge=16, description="Prompt token limit of one item.")
    sides: Literal["query", "target", "both"] = Field(
        "query", description="Which sides of training pairs get ECR (evaluation sets: queries / candidates).")
    pairs: list[str] = Field(default_factory=list, description="Pair files or folders to reason over.")
    eval_root: str | None = Field(None, description="Evaluation folder (MMEB layout) to reason over.")
    out: str = Field(".omniret/reasoning", description="Folder of ecr.jsonl and errors.jsonl.")
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers: generate in omniret's actors; vllm: ray.data.llm with vLLM "
        "(GPU, pip install \"ray[data,llm]\"; always on Ray, actors = engine replicas, num_gpus = tensor parallel).")
    ray: bool = Field(True, description="Run the reasoner actors with Ray Data (false: in this process).")
    actors: int = Field(1, ge=1, description="Reasoner actors (one model copy each).")
    batch_rows: int = Field(16, ge=1, description="Items handed to a reasoner actor per call.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per reasoner actor.")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of a Ray instance started locally.")
    sft_from: list[str] = Field(default_factory=list, description="train.objective=reason_sft: ECR files or "
                                "folders (a teacher's) the reasoner learns to write for the training pairs' sides.")
    sft_reasoner: str | None = Field(None, description="reason_sft: use only records of this reasoner id (e.g. "
                                     "teacher); needed when sft_from holds several.")
    sft_freeze_vision: bool = Field(True, description="reason_sft: keep the vision tower and merger frozen "
                                    "(Think-Then-Embed's setting).")


class ScoreConfig(Section):
    """Teacher scores for distillation: the reranker scores each pair's positive and negatives."""

    before_training: bool = Field(False, description="In a recipe: score this stage's pairs with the reranker "
                                  "first, then train on the scored pairs (distillation).")
    out: str | None = Field(None, description="Folder for the scored pair files (default: <run>/scored).")
    ray: bool = Field(False, description="Score with a Ray Data actor pool instead of in this process.")
    actors: int = Field(1, ge=1, description="Reranker actors (one model copy each).")
    batch_rows: int = Field(16, ge=1, description="Pairs per Ray Data batch.")


class UmeConfig(Section):
    """UME-R1 generative embeddings (omniret.models.generative): SFT targets and generation."""

    temperature: float = Field(0.02, gt=0, description="tau of both symmetric InfoNCE terms of the SFT loss "
                               "(UME-R1: logit_scale 50).")
    max_target_tokens: int = Field(512, ge=8, description="SFT: longest CoT target; the thinking is cut first, "
                                   "<answer>…</answer><gen_emb> is kept.")
    max_new_tokens: int = Field(256, ge=1, description="Generation budget of gen / auto embeddings (eval, serve).")
    batch_size: int = Field(8, ge=1, description="Prompts per generate / forward call (eval, serve).")


class MergeConfig(Section):
    """Model merging (omniret.models.merge): checkpoints or LoRA adapters into one HF checkpoint."""

    checkpoints: list[str] = Field(default_factory=list, description="Full HF checkpoints to merge.")
    adapters: list[str] = Field(default_factory=list, description="LoRA adapters of one base to merge.")
    base: str | None = Field(None, description="Common ancestor (ties/dare; adapters: default model.path).")
    method: Literal["linear", "ties", "dare_linear", "dare_ties"] = "linear"
    weights: list[float] | None = Field(None, description="Per model (default 1/n; 1 each for ties variants).")
    density: float = Field(1.0, gt=0, le=1, description="ties: fraction kept; dare: 1 - drop probability.")
    seed: int = Field(0, description="dare: seed of the drop masks.")
    out: str | None = Field(None, description="Output checkpoint folder.")


class GrpoConfig(Section):
    """UME-R1's GRPO stage (train.objective=ume_grpo) and MMEmb-R1's adaptive reasoning (METHODS 5.3, 9.1)."""

    num_generations: int = Field(8, ge=2, description="G completions sampled per query and per target.")
    max_completion_length: int = Field(2048, ge=1, description="Generation budget; also the loss's normaliser.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    top_p: float = Field(1.0, gt=0, le=1)
    eps_low: float = Field(0.2, ge=0, lt=1, description="Lower clip of the ratio (1 - eps_low).")
    eps_high: float = Field(0.28, ge=0, description="Upper clip of the ratio (1 + eps_high).")
    beta: float = Field(0.04, ge=0, description="Weight of the k3 KL against the frozen reference (0: no reference).")
    adaptive: bool = Field(False, description="MMEmb-R1: rollouts are forced to open with <think>; the next token "
                           "is the policy's choice between reasoning and an empty block (no-think).")
    think_cost: float = Field(0.0, ge=0, description="Reward charged per reasoning token (between <think> and "
                              "</think>); 0: UME-R1's reward.")


class OmniretConfig(Section):
    model: ModelConfig = ModelConfig()
    media: MediaConfig = MediaConfig()
    embed: EmbedConfig = EmbedConfig()
    rerank: RerankConfig = RerankConfig()
    lora: LoraConfig = LoraConfig()
    ingest: IngestConfig = IngestConfig()
    index: IndexConfig = IndexConfig()
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()
    serve: ServeConfig = ServeConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    mine: MineConfig = MineConfig()
    grpo: GrpoConfig = GrpoConfig()
    reason: ReasonConfig = ReasonConfig()
    score: ScoreConfig = ScoreConfig()
    merge: MergeConfig = MergeConfig()
    ume: UmeConfig = UmeConfig()

    @field_validator("*", mode="before")
    @classmethod
    def _none_is_default(cls, value: Any) -> Any:
        # An empty section in YAML (`media:`) parses as None; treat it as "all defaults".
        return {} if value is None else value


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=c`` into (["a", "b"], value); the value is parsed as YAML (so 3, true, null, [1, 2])."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base`` (sections merge, values replace)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                schema: type[BaseModel] = OmniretConfig, base: dict[str, Any] | None = None) -> Any:
    """Read a YAML file (or start from defaults), merge ``base`` settings over it, apply overrides,
    and validate against ``schema``."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
        data = loaded or {}
    data = merge(data, base or {})
    apply_overrides(data, overrides or [])
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ConfigError(f"invalid configuration{where}:\n" + "\n".join(lines)) from exc
