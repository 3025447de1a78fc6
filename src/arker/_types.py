# GENERATED from contract/openapi.json by scripts/generate-types. Do not edit.

from __future__ import annotations

from typing import Annotated, Any, Literal
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StringConstraints,
)
from typing_extensions import TypeAliasType


class ErrorBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    code: Annotated[
        Literal[
            "unauthorized",
            "not_found",
            "invalid_request",
            "invalid_path",
            "conflict",
            "payload_too_large",
            "unsupported_operation",
            "vm_lost",
            "rate_limited",
            "unavailable",
            "internal",
            "insufficient_storage",
            "quota_exceeded",
        ],
        Field(
            description="What callers branch on. Clients must keep codes they do not know as plain strings.\n\n- `unauthorized` (401): No API key, or a key that is unknown or revoked.\n- `not_found` (404): No such golden, VM, run, file or path; also a VM, run or file of another org.\n- `invalid_request` (400, 405, 422): Malformed JSON (400), a method the path does not accept (405), or a body, query or header that breaks the schema (422).\n- `invalid_path` (400): A file path that is not absolute, not under /home/user, or has a `..` component.\n- `conflict` (409): An Idempotency-Key or Upload-Id reused for a different request, or an operation the resource's state forbids.\n- `payload_too_large` (413): A request body over the server's limit.\n- `unsupported_operation` (400): A feature this deployment's engine does not have (for example `durable: true` without checkpoints).\n- `vm_lost` (410): The VM's host is gone and the VM was not durable.\n- `quota_exceeded` (429): The fork would pass the host's memory commitment or the org's quota (VMs or memory); `details` holds the numbers. Not retried by the SDK.\n- `insufficient_storage` (507): The storage pool's free space is below its reserve; forks and runs are refused until space is freed.\n- `rate_limited` (429): Too many requests; retry after `Retry-After` seconds.\n- `unavailable` (503, 502): The server or its engine cannot serve now; retry. 502 on a VM's port: nothing listens on it in the VM (\"nothing listens on port N in vm X\"), or it did not accept the connection.\n- `internal` (500): A bug or an unexpected failure of the server."
        ),
    ]
    message: Annotated[str, Field(description="One sentence for a person.")]
    details: Annotated[
        dict[str, Any] | None,
        Field(description="Machine-readable context, when there is any."),
    ] = None


class Error(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    error: ErrorBody


class Golden(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[str, Field(description="The name `fork` accepts as a source.")]
    description: str | None
    created_at: AwareDatetime
    scope: Annotated[
        Literal["all", "org"] | None,
        Field(
            description="`all`: built in, or published for every org by an admin key. `org`: published by the caller's org, seen and forked only with its keys. Left out by servers older than publishing."
        ),
    ] = None


class GoldenList(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    items: list[Golden]


LabelsAdditionalProperty = TypeAliasType(
    "LabelsAdditionalProperty",
    Annotated[str, Field(max_length=256, pattern="^[^\\x00]*$")],
)


EnvAdditionalProperty = TypeAliasType(
    "EnvAdditionalProperty", Annotated[str, Field(max_length=32768)]
)


class RunRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    command: Annotated[
        str,
        Field(
            description="Run by /bin/sh -c inside the VM.",
            max_length=131072,
            min_length=1,
        ),
    ]
    background: bool | None = False
    timeout_s: Annotated[float | None, Field(gt=0.0, le=86400.0)] = None
    env: Annotated[
        dict[
            Annotated[
                str,
                StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=256),
            ],
            EnvAdditionalProperty,
        ]
        | None,
        Field(max_length=256),
    ] = None
    cwd: Annotated[
        str | None,
        Field(
            description="Default /home/user.",
            max_length=4096,
            min_length=1,
            pattern="^/",
        ),
    ] = None
    stdin: Annotated[
        str | None,
        Field(
            description="Bytes fed to the command's standard input, base64 (at most 8 MiB decoded).",
            json_schema_extra={"contentEncoding": "base64"},
            max_length=11184812,
        ),
    ] = None
    user: Literal["user", "root"] | None = None
    stdin_open: Annotated[
        bool | None,
        Field(
            description="Keep the command's stdin open after `stdin` (a background run): more bytes go in through POST .../runs/{run_id}/stdin, and the command reads end-of-file only when that is called with close=true. Without it stdin ends after `stdin`."
        ),
    ] = False


class Output(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    stdout: Annotated[
        str,
        Field(
            description="base64 of the bytes written to standard output (up to the cap).",
            json_schema_extra={"contentEncoding": "base64"},
        ),
    ]
    stderr: Annotated[
        str,
        Field(
            description="base64 of the bytes written to standard error (up to the cap).",
            json_schema_extra={"contentEncoding": "base64"},
        ),
    ]
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: Annotated[int, Field(ge=0)]


class StartedRun(BaseModel):
    """
    A background run was accepted; poll it with GET /v1/vms/{vm_id}/runs/{run_id}.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    type: Literal["started"]
    run_id: str


class FileWritten(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    path: str
    size: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$")]


class Health(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    status: Literal["ok"]
    version: str
    lxcfs: Annotated[
        Literal["running", "down"] | None,
        Field(
            description="The engine's LXCFS daemon, which shows each VM its own size in /proc: `down` while it is dead (VMs keep running, and see the host's figures until it is back). Null or absent where the engine runs none."
        ),
    ] = None


class Resources(BaseModel):
    """
    What a VM may use. Omitted fields take the parent's (a fork of a VM) or the server's defaults (a fork of a golden).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    disk_mib: Annotated[
        int | None,
        Field(
            description="The VM's disk quota in MiB: what it writes beyond its source's blocks. Up to the server's maximum (`--vm-disk-max-mib`).",
            ge=1,
        ),
    ] = None
    cpu: Annotated[
        float | None,
        Field(
            description="CPUs the VM may use: a CFS quota, and for a whole number a cpuset of that many of the host's CPUs, so `nproc` and `os.cpu_count()` inside agree. Up to the server's maximum (`--vm-max-cpu`).",
            ge=0.25,
        ),
    ] = None
    memory_mib: Annotated[
        int | None,
        Field(
            description="The VM's memory limit in MiB (no swap); `free` and /proc/meminfo inside show it. Up to the server's maximum (`--vm-max-memory-mib`).",
            ge=128,
        ),
    ] = None
    pids: Annotated[
        int | None,
        Field(
            description="How many processes and threads the VM may hold at once. Up to the server's maximum (`--vm-max-pids`).",
            ge=16,
        ),
    ] = None


class VmResources(BaseModel):
    """
    The limits in force for a VM.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    disk_mib: Annotated[
        int | None,
        Field(
            description="The VM's disk quota in MiB; null when the engine enforces none.",
            ge=1,
        ),
    ] = None
    cpu: Annotated[
        float | None,
        Field(description="CPUs the VM may use (absent from older servers).", ge=0.25),
    ] = None
    memory_mib: Annotated[
        int | None,
        Field(
            description="The VM's memory limit in MiB (absent from older servers).",
            ge=1,
        ),
    ] = None
    pids: Annotated[
        int | None,
        Field(
            description="The most processes and threads the VM may hold (absent from older servers).",
            ge=1,
        ),
    ] = None


class RunWarning(BaseModel):
    """
    Something an agent should know about a run that is not an error. Clients keep codes they do not know.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    code: Annotated[
        str,
        Field(
            description="`pids_exhausted`: processes left behind keep the VM at its process limit; `restart` the VM to recover. `oom_killed`: the kernel killed the command at the VM's memory limit, which the message names; fork with a larger `resources.memory_mib`.",
            examples=["pids_exhausted", "oom_killed"],
        ),
    ]
    message: str


class NetworkPolicy(BaseModel):
    """
    What a VM may reach. Never the host, other VMs, or private, loopback, link-local (169.254.169.254 included), CGNAT or multicast ranges; no IPv6. DNS goes to the VM's own resolver.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    egress: Annotated[
        bool,
        Field(
            description="false: no route out (connecting anywhere fails at once). true: the internet, or only `allow`."
        ),
    ]
    allow: Annotated[
        list[str] | None,
        Field(
            description="With egress: only these destinations. Domain names (`example.com`; `*.example.org` is any name under example.org, not example.org itself) are enforced on the TLS SNI or HTTP Host of TCP 80 and 443 and on DNS answers; IPv4 CIDRs (`203.0.113.0/24`, or one address) on every port. Other ports follow the CIDRs only. null or absent: the internet.",
            max_length=256,
        ),
    ] = None


class VmUpdate(BaseModel):
    """
    A change to a VM's lifecycle; a field left out keeps its value.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    ttl_s: Annotated[
        int | None,
        Field(
            description="Delete the VM this many seconds from now (a new `expires_at`, sooner or later than the old one); null: never.",
            ge=1,
            le=315360000,
        ),
    ] = None
    idle_stop_s: Annotated[
        int | None,
        Field(
            description="A new idle time before the VM is stopped; null: never.",
            ge=1,
            le=31536000,
        ),
    ] = None


class PortTokenRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    ttl_s: Annotated[
        int | None,
        Field(description="How long the token works, in seconds.", ge=1, le=86400),
    ] = 3600


class PortToken(BaseModel):
    """
    A URL that opens the VM's port in a browser, with no API key, until `expires_at`.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    url: Annotated[
        str,
        Field(
            description="With the server's `--preview-domain D`: `http://{port}-{vm_id}.D/?arker_token=...` (the VM id lower-cased); without: `{base}/v1/vms/{vm_id}/ports/{port}/?arker_token=...`. The first request with the token sets an HttpOnly cookie for that host and path, so the app's own links and assets work."
        ),
    ]
    expires_at: AwareDatetime


class RunOutputGap(BaseModel):
    """
    The data of a `gap` event: bytes of one stream the server no longer holds (the middle of a stream longer than its cap).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    stream: Literal["stdout", "stderr"]
    from_: Annotated[int, Field(alias="from", ge=0)]
    to: Annotated[int, Field(ge=0)]
    bytes: Annotated[int, Field(ge=0)]


class RunStdinWritten(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    bytes_written: Annotated[
        int,
        Field(description="Bytes of the body that went into the run's stdin.", ge=0),
    ]
    closed: Annotated[bool, Field(description="Whether stdin is now closed.")]


class RunSignal(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    signal: Annotated[
        str,
        Field(
            description="A signal name: SIGINT, SIGTERM, SIGKILL, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGSTOP, SIGCONT, SIGWINCH, SIGALRM or SIGPIPE.",
            max_length=16,
            min_length=4,
            pattern="^SIG[A-Z0-9+-]+$",
        ),
    ]


class PtyResize(BaseModel):
    """
    Client to server, as a text frame on `/v1/vms/{vm_id}/pty`: the window's new size.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    type: Literal["resize"]
    cols: Annotated[int, Field(ge=1, le=1000)]
    rows: Annotated[int, Field(ge=1, le=1000)]


class PtyStarted(BaseModel):
    """
    Server to client, the first frame of a terminal: the shell runs.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    type: Literal["started"]


class PtyExit(BaseModel):
    """
    Server to client, the last frame before a normal close: the shell's exit status (128 + N for a signal N), null when the VM ended it (deleted, stopped or restarted).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    type: Literal["exit"]
    exit_code: int | None


class PtyRefused(BaseModel):
    """
    Server to client, the only frame of a refused terminal, followed by a close with 4000 + the HTTP status the same failure gets on the other routes.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    type: Literal["error"]
    error: ErrorBody


class RunEventFrame(BaseModel):
    """
    One Server-Sent Event of a run's stream, as a client's SSE parser gives it: `stdout`/`stderr` (data: base64 bytes), `gap` (data: RunOutputGap as JSON), `end` (data: RunStatus as JSON). Output and gap events carry an id, `STDOUT:STDERR` byte offsets.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    event: Literal["stdout", "stderr", "gap", "end"]
    id: Annotated[str | None, Field(pattern="^[0-9]{1,19}:[0-9]{1,19}$")] = None
    data: str
    retry: int | None = None


class FsMoveRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    source: Annotated[str, Field(max_length=4096, min_length=1)]
    destination: Annotated[
        str,
        Field(
            description="The new name (not a directory to move into); its parent must exist.",
            max_length=4096,
            min_length=1,
        ),
    ]
    overwrite: Annotated[
        bool | None,
        Field(
            description="Replace a file, symlink or empty directory at `destination`; without it, anything there is `conflict`."
        ),
    ] = False


class ArchiveUnpacked(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    path: str
    entries: Annotated[
        int, Field(description="Members unpacked (files, directories, links).", ge=0)
    ]
    bytes: Annotated[int, Field(description="Bytes of file data written.", ge=0)]


class FsMkdirRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    path: Annotated[str, Field(max_length=4096, min_length=1)]
    parents: Annotated[
        bool | None,
        Field(
            description="Make missing parents too, and accept a directory already there (as `mkdir -p`)."
        ),
    ] = False


class PublishGoldenRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[
        str,
        Field(
            description="Lowercase letters, digits and `_.-`, starting with a letter or digit.",
            max_length=63,
            min_length=1,
            pattern="^[a-z0-9][a-z0-9_.-]{0,62}$",
        ),
    ]
    from_vm: Annotated[
        str,
        Field(
            description="A VM of the caller's org; its files as they are now become the golden (a read-only snapshot, in constant time). The VM keeps running.",
            max_length=128,
            min_length=1,
            pattern="^[\\x21-\\x7e]+$",
        ),
    ]
    description: Annotated[str | None, Field(max_length=1000, pattern="^[^\\x00]*$")] = None
    for_all: Annotated[
        bool | None,
        Field(
            description="Publish for every org (an admin key only). Default false: for the caller's org."
        ),
    ] = None


class OperationProgress(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    done: Annotated[int, Field(description="Bytes or steps done.", ge=0)]
    total: Annotated[
        int | None,
        Field(description="Bytes or steps in all; null while not known.", ge=0),
    ]
    message: str


class OperationError(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    code: Annotated[
        Literal[
            "unauthorized",
            "not_found",
            "invalid_request",
            "invalid_path",
            "conflict",
            "payload_too_large",
            "unsupported_operation",
            "vm_lost",
            "rate_limited",
            "unavailable",
            "internal",
            "insufficient_storage",
            "quota_exceeded",
        ],
        Field(
            description="What callers branch on. Clients must keep codes they do not know as plain strings.\n\n- `unauthorized` (401): No API key, or a key that is unknown or revoked.\n- `not_found` (404): No such golden, VM, run, file or path; also a VM, run or file of another org.\n- `invalid_request` (400, 405, 422): Malformed JSON (400), a method the path does not accept (405), or a body, query or header that breaks the schema (422).\n- `invalid_path` (400): A file path that is not absolute, not under /home/user, or has a `..` component.\n- `conflict` (409): An Idempotency-Key or Upload-Id reused for a different request, or an operation the resource's state forbids.\n- `payload_too_large` (413): A request body over the server's limit.\n- `unsupported_operation` (400): A feature this deployment's engine does not have (for example `durable: true` without checkpoints).\n- `vm_lost` (410): The VM's host is gone and the VM was not durable.\n- `quota_exceeded` (429): The fork would pass the host's memory commitment or the org's quota (VMs or memory); `details` holds the numbers. Not retried by the SDK.\n- `insufficient_storage` (507): The storage pool's free space is below its reserve; forks and runs are refused until space is freed.\n- `rate_limited` (429): Too many requests; retry after `Retry-After` seconds.\n- `unavailable` (503, 502): The server or its engine cannot serve now; retry. 502 on a VM's port: nothing listens on it in the VM (\"nothing listens on port N in vm X\"), or it did not accept the connection.\n- `internal` (500): A bug or an unexpected failure of the server."
        ),
    ]
    message: str
    status: int


class OperationEventFrame(BaseModel):
    """
    One Server-Sent Event of an operation's stream, as a client's SSE parser gives it: `progress` (data: the Operation as JSON) each time it changes, and last `end` (data: the Operation as JSON, in its final state).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    event: Literal["progress", "end"]
    data: str
    retry: int | None = None


class Vm(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    vm_id: Annotated[
        str,
        Field(
            description="A ULID; burst deployments append `_<suffix>`.",
            examples=["01KQH2ADR3DCAJF06N4R453WPJ", "01KQH2ADR3DCAJF06N4R453WPJ_uswe"],
        ),
    ]
    name: str | None
    base_image: Annotated[str, Field(description="The golden at the root of this VM's lineage.")]
    region: str
    created_at: AwareDatetime
    parent_id: Annotated[
        str | None,
        Field(description="The VM this one was forked from; null when forked from a golden."),
    ]
    durable: bool
    state: Annotated[
        Literal["running", "stopped", "lost"],
        Field(
            description="`running`: its init holds the namespaces. `stopped`: no processes; files kept, started again on the next run. `lost`: its host is gone and it was not durable."
        ),
    ]
    resources: VmResources | None = None
    network: Annotated[
        NetworkPolicy | None,
        Field(description="The policy in force (absent from servers older than networking)."),
    ] = None
    expires_at: Annotated[
        AwareDatetime | None,
        Field(
            description="When the VM is deleted (its TTL); null: never. Absent from servers older than TTLs."
        ),
    ] = None
    idle_stop_s: Annotated[
        int | None,
        Field(
            description="Seconds with nothing to do after which the VM is stopped (see `ForkRequest.idle_stop_s`); null: never."
        ),
    ] = None
    labels: Annotated[
        dict[str, str] | None,
        Field(
            description="Its labels (see `ForkRequest.labels`); absent from servers older than labels."
        ),
    ] = None
    host: Annotated[
        str | None,
        Field(
            description="In a cluster, the id of the host agent that holds the VM; absent outside a cluster."
        ),
    ] = None


class VmList(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    items: list[Vm]
    total: Annotated[int, Field(ge=0)]


class ForkRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[
        str | None,
        Field(
            description="Also the VM's hostname.",
            max_length=63,
            min_length=1,
            pattern="^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$",
        ),
    ] = None
    durable: bool | None = False
    resources: Resources | None = None
    network: Annotated[
        NetworkPolicy | None,
        Field(
            description="Omitted: the parent VM's policy, or for a golden the server's default (`arker serve --egress on|off`)."
        ),
    ] = None
    ttl_s: Annotated[
        int | None,
        Field(
            description="Delete the VM this many seconds after the fork (it reports the time as `expires_at`; `PATCH /v1/vms/{vm_id}` moves it). Omitted: the server's default (`arker serve --default-ttl-s`), not the parent's; null: no TTL, whatever the default.",
            ge=1,
            le=315360000,
        ),
    ] = None
    idle_stop_s: Annotated[
        int | None,
        Field(
            description="Stop the VM (its processes end, its files stay, it starts again on its next call) once it has had no run in flight, no open stream, terminal or port relay and no call for this many seconds. Omitted: the server's default (`arker serve --default-idle-stop-s`), not the parent's; null: never.",
            ge=1,
            le=31536000,
        ),
    ] = None
    labels: Annotated[
        dict[
            Annotated[
                str,
                StringConstraints(
                    pattern=r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?$",
                    max_length=317,
                ),
            ],
            LabelsAdditionalProperty,
        ]
        | None,
        Field(
            description="Names a caller gives a VM, to find it again (`GET /v1/vms?label=key=value`). At most 64; a key is a name of 1 to 63 characters (letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit), optionally after a `prefix/` of lowercase DNS labels (at most 253 characters); a value is at most 256 characters. Omitted: none; a fork of a VM does not inherit its parent's labels.",
            max_length=64,
        ),
    ] = None


class CompletedRun(BaseModel):
    """
    The command ended by itself. A non-zero exit is a result, not an error.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    type: Literal["completed"]
    run_id: str
    stdout: Annotated[
        str,
        Field(
            description="base64 of the bytes written to standard output (up to the cap).",
            json_schema_extra={"contentEncoding": "base64"},
        ),
    ]
    stderr: Annotated[
        str,
        Field(
            description="base64 of the bytes written to standard error (up to the cap).",
            json_schema_extra={"contentEncoding": "base64"},
        ),
    ]
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: Annotated[int, Field(ge=0)]
    exit_code: Annotated[
        int,
        Field(description="The command's exit status; 128+N when killed by signal N."),
    ]
    oom_killed: Annotated[
        bool,
        Field(description="The VM's memory limit killed the command (exit code 137)."),
    ]
    warnings: Annotated[
        list[RunWarning] | None,
        Field(description="Empty when there is nothing to say; older servers leave it out."),
    ] = None


class TimedOutRun(BaseModel):
    """
    timeout_s passed; the whole process tree of the run was killed. Output is what it printed until then.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    type: Literal["timed_out"]
    run_id: str
    stdout: Annotated[
        str,
        Field(
            description="base64 of the bytes written to standard output (up to the cap).",
            json_schema_extra={"contentEncoding": "base64"},
        ),
    ]
    stderr: Annotated[
        str,
        Field(
            description="base64 of the bytes written to standard error (up to the cap).",
            json_schema_extra={"contentEncoding": "base64"},
        ),
    ]
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: Annotated[int, Field(ge=0)]
    timeout_s: float
    warnings: Annotated[
        list[RunWarning] | None,
        Field(description="Empty when there is nothing to say; older servers leave it out."),
    ] = None


class CancelledRun(BaseModel):
    """
    The run was cancelled; its process tree was killed.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    type: Literal["cancelled"]
    run_id: str
    stdout: Annotated[
        str,
        Field(
            description="base64 of the bytes written to standard output (up to the cap).",
            json_schema_extra={"contentEncoding": "base64"},
        ),
    ]
    stderr: Annotated[
        str,
        Field(
            description="base64 of the bytes written to standard error (up to the cap).",
            json_schema_extra={"contentEncoding": "base64"},
        ),
    ]
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: Annotated[int, Field(ge=0)]
    warnings: Annotated[
        list[RunWarning] | None,
        Field(description="Empty when there is nothing to say; older servers leave it out."),
    ] = None


class FailedRun(BaseModel):
    """
    The run could not finish: the server lost it (a restart cut off a run of a non-durable VM, or its VM was stopped or deleted under it). Output is what it printed until then.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    type: Literal["failed"]
    run_id: str
    stdout: Annotated[
        str,
        Field(
            description="base64 of the bytes written to standard output (up to the cap).",
            json_schema_extra={"contentEncoding": "base64"},
        ),
    ]
    stderr: Annotated[
        str,
        Field(
            description="base64 of the bytes written to standard error (up to the cap).",
            json_schema_extra={"contentEncoding": "base64"},
        ),
    ]
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: Annotated[int, Field(ge=0)]
    failure_reason: Annotated[str, Field(description="Why the run failed, for a person.")]
    warnings: Annotated[
        list[RunWarning] | None,
        Field(description="Empty when there is nothing to say; older servers leave it out."),
    ] = None


class RunResult(RootModel[CompletedRun | TimedOutRun | CancelledRun | FailedRun | StartedRun]):
    root: Annotated[
        CompletedRun | TimedOutRun | CancelledRun | FailedRun | StartedRun,
        Field(discriminator="type"),
    ]


class RunStatus(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    run_id: str
    vm_id: str
    state: Literal["queued", "running", "completed", "timed_out", "cancelled", "failed"]
    background: bool
    exit_code: int | None
    stdout: Annotated[
        str,
        Field(
            description="base64 of standard output so far.",
            json_schema_extra={"contentEncoding": "base64"},
        ),
    ]
    stderr: Annotated[
        str,
        Field(
            description="base64 of standard error so far.",
            json_schema_extra={"contentEncoding": "base64"},
        ),
    ]
    stdout_truncated: bool
    stderr_truncated: bool
    oom_killed: bool
    retry_count: Annotated[
        int,
        Field(
            description="Automatic restarts after a crash (durable VMs); 0 for runs never interrupted.",
            ge=0,
        ),
    ]
    failure_reason: Annotated[str | None, Field(description="Why a `failed` run failed.")]
    created_at: AwareDatetime
    started_at: AwareDatetime | None
    finished_at: AwareDatetime | None
    duration_ms: Annotated[int | None, Field(ge=0)]
    warnings: Annotated[
        list[RunWarning] | None,
        Field(description="Empty when there is nothing to say; older servers leave it out."),
    ] = None
    stdout_bytes: Annotated[
        int | None,
        Field(
            description="Bytes the run has written to stdout in all (more than `stdout` holds when it is truncated: then `stdout` is its head and its tail, half each, head first).",
            ge=0,
        ),
    ] = None
    stdout_start: Annotated[
        int | None,
        Field(
            description="The offset in the stream of the first byte of `stdout`: 0, or where a `stdout_after` window starts (past the offset asked for when the bytes there were dropped).",
            ge=0,
        ),
    ] = None
    stderr_bytes: Annotated[
        int | None,
        Field(
            description="Bytes the run has written to stderr in all (more than `stderr` holds when it is truncated: then `stderr` is its head and its tail, half each, head first).",
            ge=0,
        ),
    ] = None
    stderr_start: Annotated[
        int | None,
        Field(
            description="The offset in the stream of the first byte of `stderr`: 0, or where a `stderr_after` window starts (past the offset asked for when the bytes there were dropped).",
            ge=0,
        ),
    ] = None


class NetworkUpdate(BaseModel):
    """
    A change to a VM's network policy; a field left out keeps its value (`allow: null` lifts the allow-list).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    egress: bool | None = None
    allow: Annotated[
        list[str] | None,
        Field(
            description="With egress: only these destinations. Domain names (`example.com`; `*.example.org` is any name under example.org, not example.org itself) are enforced on the TLS SNI or HTTP Host of TCP 80 and 443 and on DNS answers; IPv4 CIDRs (`203.0.113.0/24`, or one address) on every port. Other ports follow the CIDRs only. null or absent: the internet.",
            max_length=256,
        ),
    ] = None


class FsEntry(BaseModel):
    """
    One file, as lstat sees it: a symlink is reported as itself, not what it points to.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[
        str,
        Field(
            description="Relative to the listed directory (`a/b.txt` at depth 2); for stat, the last component."
        ),
    ]
    path: Annotated[str, Field(description="Absolute, as the VM sees it.")]
    type: Annotated[
        Literal["file", "dir", "symlink", "other"],
        Field(description="`other`: a FIFO, socket or device node."),
    ]
    size: Annotated[int, Field(description="Bytes (of a symlink: its target's length).", ge=0)]
    mode: Annotated[
        int,
        Field(
            description="Permission bits with setuid, setgid and sticky (0o7777), as an integer.",
            ge=0,
            le=4095,
        ),
    ]
    mtime: AwareDatetime
    link_target: Annotated[
        str | None,
        Field(description="What a symlink points to, as written; null for other types."),
    ] = None


class FsList(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    path: str
    entries: list[FsEntry]
    next_offset: Annotated[
        int | None,
        Field(description="The `offset` of the next page; null on the last page.", ge=0),
    ]
    truncated: Annotated[
        bool,
        Field(
            description="The walk stopped at the server's bound on names read in one request (100 000): entries past it are not listed, on any page."
        ),
    ]


class Operation(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    operation_id: str
    kind: Annotated[
        str,
        Field(description="`import_golden` (clients keep kinds they do not know as strings)."),
    ]
    state: Literal["running", "succeeded", "failed"]
    progress: OperationProgress
    golden: Annotated[Golden | None, Field(description="The golden made, once `succeeded`.")]
    error: Annotated[
        OperationError | None,
        Field(
            description="Why it `failed`, with the HTTP status the same error would have had (a tarball that is not a root filesystem: `invalid_request`, 400). Nothing of a failed operation is kept."
        ),
    ]
    created_at: AwareDatetime
    updated_at: AwareDatetime
