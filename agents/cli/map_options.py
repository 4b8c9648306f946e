"""agents-map's command line: every option, its help and its default (see agents-map(1))."""

from __future__ import annotations

from agents.cli._run import EXIT_STATUS_EPILOG, Parser, Streams
from agents.map.answer import MERGE_STRATEGIES, OUTPUT_FORMATS
from agents.map.http import DEFAULT_BASE_URL
from agents.map.job import DEFAULTS

PROG = "agents-map"

DESCRIPTION = """\
Fill a prompt from each JSON Lines record on stdin, call an OpenAI-compatible chat API for it,
and write one record per input record to stdout: the record with its result, or an error record.

examples:
  agents-read words.csv | agents-map --prompt 'Translate to French: {word}' | agents-write out.csv
  agents-map -p prompt.txt -j 50 --output-format json < words.jsonl > results.jsonl
  agents-map --config job.yaml --dry-run --limit 3 < words.jsonl
"""


def build_parser(streams: Streams) -> Parser:
    parser = Parser(prog=PROG, description=DESCRIPTION, epilog=EXIT_STATUS_EPILOG, streams=streams)
    add_map_options(parser)
    return parser


def add_map_options(parser: Parser) -> None:
    """Every agents-map option (also those of agents process)."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="a job.yaml with llm, processing, prompt and output sections; "
        "flags override it (default: none)",
    )
    prompt = parser.add_argument_group("prompt")
    prompt.add_argument(
        "-p",
        "--prompt-file",
        metavar="FILE",
        help="the prompt template, read from FILE; {field} and {field.sub} are "
        "filled from each record, {{ and }} are literal braces",
    )
    prompt.add_argument("--prompt", metavar="TEXT", help="the prompt template, given inline")
    prompt.add_argument(
        "--system",
        metavar="TEXT",
        help="a system prompt (a template too), given inline (default: none)",
    )
    prompt.add_argument(
        "--system-file", metavar="FILE", help="the system prompt, read from FILE (default: none)"
    )
    model = parser.add_argument_group("model and endpoint")
    model.add_argument(
        "-m",
        "--model",
        metavar="NAME",
        help="model name (default: the one model a server other than OpenAI's serves, "
        "else gpt-4o-mini)",
    )
    model.add_argument(
        "--base-url",
        metavar="URL",
        help=f"the API's base URL (default: $OPENAI_BASE_URL, else {DEFAULT_BASE_URL})",
    )
    model.add_argument(
        "--fallback-model",
        action="append",
        metavar="NAME",
        help="a model tried for a record the model before it cannot answer: unknown to the "
        "server, context too long, a refusal, retries used up, an answer still invalid after "
        "the re-asks (repeatable, tried in order; each output record then names its model "
        "under _model; default: none)",
    )
    model.add_argument(
        "--endpoint",
        action="append",
        metavar="'URL [weight=N] [jobs=N] [rpm=N] [tpm=N] [key-env=NAME] [model=NAME]'",
        help="one of several servers for the job, instead of --base-url (repeatable): "
        "requests split by weight (default 1) among those with room; jobs= caps its requests "
        "in flight, rpm=/tpm= are its own limits, key-env= the variable with its key "
        "(default: the job's), model= its name for the model; a failing one is cooled down "
        "and its requests go to the others (default: none)",
    )
    model.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="the environment variable that holds the API key "
        "(default: OPENAI_API_KEY); keys are never taken from flags",
    )
    model.add_argument(
        "-H",
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="an extra HTTP header for every request (repeatable; default: none)",
    )
    model.add_argument(
        "--temperature",
        type=float,
        metavar="T",
        help="sampling temperature (default: the server's)",
    )
    model.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="the answer's token limit, sent as max_tokens (default: the server's)",
    )
    model.add_argument(
        "--max-completion-tokens",
        type=int,
        metavar="N",
        help="the same limit sent as max_completion_tokens, for models that "
        "require it (default: none)",
    )
    model.add_argument("--seed", type=int, metavar="N", help="sampling seed (default: none)")
    model.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help=f"time limit of one request (default: {DEFAULTS['timeout']:g})",
    )
    model.add_argument(
        "--stream",
        action="store_true",
        default=None,
        help="ask for each answer as a stream of events and put it together; gives "
        "--idle-timeout and the time to the first token (default: off)",
    )
    model.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="with --stream, the longest silence in an answer before it is given up and "
        "retried (default: none, --timeout only)",
    )
    model.add_argument(
        "--param",
        action="append",
        metavar="KEY=JSON",
        help="another request parameter, its value as JSON, e.g. top_p=0.9 "
        "(repeatable; default: none)",
    )
    model.add_argument(
        "--price",
        metavar="IN,OUT",
        help="dollars per million input and output tokens (default: the price "
        "table's entry for the model)",
    )
    processing = parser.add_argument_group("processing")
    processing.add_argument(
        "-j",
        "--jobs",
        type=int,
        metavar="N",
        help=f"requests in flight at once; 1 is sequential (default: {DEFAULTS['jobs']})",
    )
    processing.add_argument(
        "-k",
        "--keep-order",
        action="store_true",
        default=None,
        help="write results in input order (default: as they complete)",
    )
    processing.add_argument(
        "--max-retries",
        type=int,
        metavar="N",
        help=f"retries of a request after a retryable error (default: {DEFAULTS['max_retries']})",
    )
    processing.add_argument(
        "--retry-delay",
        type=float,
        metavar="SECONDS",
        help=f"the first backoff step, doubled each retry, with jitter; a "
        f"server's Retry-After is waited for when longer "
        f"(default: {DEFAULTS['retry_delay']:g})",
    )
    processing.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help=f"after Ctrl-C, how long requests in flight may finish "
        f"(default: {DEFAULTS['grace']:g})",
    )
    processing.add_argument(
        "-n",
        "--limit",
        type=int,
        metavar="N",
        help="process only the first N records; with --dry-run, show only "
        "their requests (default: all)",
    )
    processing.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="send nothing: print the requests, missing fields, and the "
        "token and cost estimate of the whole input (default: off)",
    )
    limits = parser.add_argument_group("rate limits and caps")
    limits.add_argument(
        "--rpm",
        type=float,
        metavar="N",
        help="requests per minute allowed (default: learned from the server's "
        "x-ratelimit headers, else no limit)",
    )
    limits.add_argument(
        "--tpm",
        type=float,
        metavar="N",
        help="tokens per minute allowed, counting the prompt and max_tokens "
        "before sending (default: learned, else no limit)",
    )
    limits.add_argument(
        "--rate-group",
        metavar="NAME",
        help="share the --rpm/--tpm budget with every process on this host "
        "that names the same group (default: none, this process alone)",
    )
    limits.add_argument(
        "--max-cost",
        type=float,
        metavar="USD",
        help="stop sending before the spend could pass USD; exit 4, resumable (default: no cap)",
    )
    limits.add_argument(
        "--max-errors",
        metavar="N|PCT%",
        help="stop sending after N failed records, or when PCT%% of those "
        "attempted failed (after 20); exit 4, resumable (default: no cap)",
    )
    resume = parser.add_argument_group("resume")
    resume.add_argument(
        "--resume",
        metavar="OUTPUT",
        help="the output this job writes to (the file agents-write appends to): "
        "records it holds as successes are skipped, so the same command "
        "run again finishes an interrupted job (default: none)",
    )
    resume.add_argument(
        "--keep-failed",
        action="store_true",
        default=None,
        help="with --resume, skip records whose error records are in the output "
        "too (default: off, they are retried)",
    )
    resume.add_argument(
        "--force-resume",
        action="store_true",
        default=None,
        help="resume even though the prompt, model, format, schema or merge "
        "strategy changed, or the input did (default: off, refused)",
    )
    cache = parser.add_argument_group("cache")
    cache.add_argument(
        "--cache",
        nargs="?",
        const="",
        type=_cache_path,
        metavar="PATH",
        help="answer requests already asked from a SQLite cache of answers, and keep new "
        "ones there (PATH: default $XDG_CACHE_HOME/agents/responses.sqlite; also "
        "AGENTS_CACHE) (default: no cache)",
    )
    cache.add_argument(
        "--cache-mode",
        choices=("use", "refresh", "read-only"),
        help="use: hits answered, new answers kept; refresh: no hits, new answers kept; "
        "read-only: hits answered, nothing kept (default: use)",
    )
    cache.add_argument(
        "--cache-scope",
        metavar="TEXT",
        help="part of every cache key, for different weights served under one model name "
        "(default: none)",
    )
    cache.add_argument(
        "--no-dedup",
        dest="dedup",
        action="store_false",
        default=None,
        help="send identical requests in flight at once each on its own (at temperature > 0: "
        "independent samples) (default: they share one request and its answer)",
    )
    batch = parser.add_argument_group("batch mode (see BATCH MODE in agents-map(1))")
    batch.add_argument(
        "--batch",
        action="store_true",
        default=None,
        help="send the job through the provider's Batch API: half the price, answers within "
        "24 h; the same command run again collects what was submitted (default: online)",
    )
    batch.add_argument(
        "--batch-detach",
        action="store_true",
        default=None,
        help="with --batch: submit, print the batch IDs and exit 4; the same command run later "
        "collects the results (default: off, wait for them)",
    )
    batch.add_argument(
        "--batch-cancel",
        action="store_true",
        default=None,
        help="with --batch: cancel the job's batches still running, and exit 4; the same "
        "command without it collects what they did and submits the rest again (default: off)",
    )
    batch.add_argument(
        "--batch-retry",
        choices=("batch", "online"),
        help="where lines that expired, were cancelled or failed in a way a retry can fix are "
        "sent again: in a new batch, or online at the online price (default: batch)",
    )
    batch.add_argument(
        "--batch-poll",
        type=float,
        metavar="SECONDS",
        help="the longest wait between two looks at the pending batches; the first is 1 s, "
        "each later one half again as long (default: 60)",
    )
    batch.add_argument(
        "--batch-keep-files",
        action="store_true",
        default=None,
        help="keep the uploaded input files on the server (default: deleted once their batch ends)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--output-format",
        choices=OUTPUT_FORMATS,
        help="text: the answer as it is; json: parsed as JSON; structured: "
        "parsed and validated against --schema (default: text)",
    )
    output.add_argument(
        "--schema",
        metavar="FILE",
        help="a JSON Schema for --output-format structured, also sent to the "
        "server as response_format (default: none)",
    )
    output.add_argument(
        "--merge",
        choices=MERGE_STRATEGIES,
        help="extend: the record plus the result under --field; update: an "
        "object result's keys merged into the record; replace: the ID "
        "and the result only (default: extend)",
    )
    output.add_argument(
        "--field", metavar="NAME", help="the key that holds the result (default: result)"
    )
    output.add_argument(
        "--max-reasks",
        type=int,
        metavar="N",
        help=f"times an answer that does not parse or validate is asked again, "
        f"apart from retries (default: {DEFAULTS['max_reasks']})",
    )
    output.add_argument(
        "--accept-truncated",
        action="store_true",
        default=None,
        help="with --output-format text, take an answer cut off at the token limit as the "
        "result (default: off, an error record of type truncated)",
    )
    output.add_argument(
        "--errors",
        metavar="FILE",
        help="append error records to FILE instead of stdout (default: stdout)",
    )
    output.add_argument(
        "--stats",
        metavar="FILE",
        help="write the run's figures as JSON to FILE at the end (default: none)",
    )
    output.add_argument(
        "--status",
        metavar="FILE|DIR/",
        help="keep the run's live figures in FILE, rewritten whole about once a second, the "
        "outcome at the end; in DIR/, one HOST-PID.json per process, for 'agents watch DIR' "
        "(default: none)",
    )
    output.add_argument(
        "--notify",
        action="append",
        metavar="URL|cmd:COMMAND",
        help="when the run ends, POST its figures and outcome as JSON to URL, or give them to "
        "COMMAND's stdin (repeatable; waited for 5 s at most, and never changes the exit "
        "status; default: none)",
    )
    report = parser.add_argument_group("progress and logs (all on stderr)")
    report.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show progress even when stderr is not a terminal (then a plain "
        "line every 5 seconds); default: only on a terminal",
    )
    report.add_argument(
        "--total",
        type=int,
        metavar="N",
        help="the number of records, for the ETA when reading a pipe "
        "(default: counted when stdin is a file)",
    )
    report.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=None,
        help="no progress and no end-of-run summary; errors only (default: off)",
    )
    report.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="INFO adds retries, DEBUG every request and response with its "
        "usage; the key is redacted (default: WARNING)",
    )
    report.add_argument(
        "--log-file",
        metavar="FILE",
        help="write the log to FILE instead of stderr (default: stderr)",
    )


def _cache_path(text: str) -> str:
    """--cache's optional PATH, refused at once when it names data: `agents process --cache
    in.csv out.csv` would otherwise end in a missing OUTPUT, naming the wrong mistake."""
    import argparse
    from pathlib import Path

    from agents.errors import UsageError
    from agents.map.cache import refuse_data_path

    try:
        refuse_data_path(Path(text))
    except UsageError as refused:
        raise argparse.ArgumentTypeError(
            refused.message.replace(f"--cache {text}: ", f"{text}: ", 1)
        ) from None
    return text
