"""The `stillpoint` command: create a conversation, stream its meditation, and save the videos."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import grpc

from services.database import DatabaseNotReadyError, create_engine, read_database_url
from services.environment import ConfigError, Environment
from services.gateway import migrate as gateway_migrate
from services.gateway.api_keys import ApiKeyStore
from services.gateway.errors import GatewayError
from services.gateway.jobs.store import JobStore
from services.image_sizes import LANDSCAPE_SIZE_PIXELS, SQUARE_SIZE_PIXELS, describe_size
from services.message_roles import role_values
from services.proto_time import seconds_of, to_timestamp
from services.serving import channel_options, internal_channel_credentials
from services.tls import read_internal_tls
from stillpoint.content.v2 import content_service_pb2 as content_pb
from stillpoint.content.v2 import content_service_pb2_grpc as content_grpc
from stillpoint.gateway.v1 import gateway_service_pb2 as gateway_pb
from stillpoint.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc

_ROLES = role_values(gateway_pb.MessageRole)
MeditationStreamResponse = gateway_pb.GenerateMeditationResponse | gateway_pb.WatchMeditationResponse


class UsageError(Exception):
    """The user's input cannot be used; the message says what to fix."""


class _BearerCredential:
    """Adds `authorization: Bearer <credential>` to a call's metadata."""

    def __init__(self, credential: str) -> None:
        self._metadatum = ("authorization", f"Bearer {credential}")

    def _with_credential(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._metadatum)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files an interceptor under the first of the four interfaces it implements (an if/elif chain), so
# one class per call shape.
class _UnaryUnaryBearer(_BearerCredential, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_credential(details), request)


class _UnaryStreamBearer(_BearerCredential, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_credential(details), request)


class _StreamUnaryBearer(_BearerCredential, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._with_credential(details), request_iterator)


class _StreamStreamBearer(_BearerCredential, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._with_credential(details), request_iterator)


def bearer_interceptors(credential: str) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that send `authorization: Bearer <credential>` with every call on a channel."""
    return [
        _UnaryUnaryBearer(credential),
        _UnaryStreamBearer(credential),
        _StreamUnaryBearer(credential),
        _StreamStreamBearer(credential),
    ]


def content_channel(address: str) -> grpc.aio.Channel:
    """A channel to the content service: mutual TLS with the internal certificates (the STILLPOINT_INTERNAL_*
    files, as the gateway uses them) when they are set. Content answers only a certificate that names one of
    its allowed callers (STILLPOINT_INTERNAL_ALLOWED_CALLERS, by default the gateway): operators present the
    gateway's certificate, or one of their own that content lists."""
    try:
        tls = read_internal_tls(Environment(os.environ))
    except ConfigError as error:
        raise UsageError(f"configuration error: {error}") from None
    if tls is None:
        return grpc.aio.insecure_channel(address, options=channel_options())
    options = [*channel_options(), ("grpc.ssl_target_name_override", "content")]
    return grpc.aio.secure_channel(address, internal_channel_credentials(tls), options=options)


def gateway_channel(address: str, api_key: str) -> grpc.aio.Channel:
    """A channel to the gateway that authenticates every call with `api_key` (none when empty)."""
    interceptors = bearer_interceptors(api_key) if api_key else []
    return grpc.aio.insecure_channel(address, options=channel_options(), interceptors=interceptors)


def load_conversation(path: Path) -> gateway_pb.CreateConversationRequest:
    """Reads a conversation file: {"title": ..., "messages": [{"role", "text", "time"?}, ...]}."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path} does not exist") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("messages"), list):
        raise UsageError(f'{path} needs an object with a "messages" list')
    request = gateway_pb.CreateConversationRequest(title=str(document.get("title", "")))
    for index, entry in enumerate(document["messages"]):
        if not isinstance(entry, dict):
            raise UsageError(f"{path}: messages[{index}] is not an object")
        role = _ROLES.get(str(entry.get("role", "")).lower())
        if role is None:
            raise UsageError(f"{path}: messages[{index}].role must be user, assistant or system")
        message = request.messages.add(role=role, text=str(entry.get("text", "")))
        if entry.get("time"):
            try:
                moment = datetime.fromisoformat(str(entry["time"]).replace("Z", "+00:00"))
            except ValueError:
                raise UsageError(f"{path}: messages[{index}].time is not an ISO 8601 time") from None
            message.create_time.CopyFrom(to_timestamp(moment))
    return request


def describe(response: MeditationStreamResponse) -> str:
    """One readable line for an event."""
    kind = response.WhichOneof("event")
    if kind == "accepted":
        return f"accepted {response.accepted.meditation}"
    if kind == "stage":
        stage = gateway_pb.Stage.Name(response.stage.stage).removeprefix("STAGE_").lower()
        state = gateway_pb.StageState.Name(response.stage.state).removeprefix("STAGE_STATE_").lower()
        took = seconds_of(response.stage.stage_elapsed)
        line = f"{stage} {state}" + (f" in {took:.2f}s" if state != "started" else "")
        return line + (f" — {response.stage.detail}" if response.stage.detail else "")
    if kind == "transcript_ready":
        ready = response.transcript_ready
        line = f"transcript ready: {ready.word_count} words by {ready.provider}"
        return line + (" (cached)" if ready.cached else "") + _fallback(ready.fallback_reason)
    if kind == "image_ready":
        image = response.image_ready
        line = f"image ready: {image.width_pixels}x{image.height_pixels} by {image.provider}"
        return line + (" (cached)" if image.cached else "") + _fallback(image.fallback_reason)
    if kind == "playlist_ready":
        return f"live preview ready (HLS, playable now): {response.playlist_ready.uri}"
    if kind == "narration_ready":
        narration = response.narration_ready
        line = (
            f"narration ready: {seconds_of(narration.duration):.1f}s of audio, {len(narration.sentences)} "
            f"sentences, by {narration.provider}"
        )
        return line + _fallback(narration.fallback_reason)
    if kind == "video_ready":
        video = response.video_ready
        quality = gateway_pb.VideoQuality.Name(video.quality).removeprefix("VIDEO_QUALITY_").lower()
        return (
            f"{quality} video ready: {video.width_pixels}x{video.height_pixels}, "
            f"{seconds_of(video.duration):.1f}s, {video.size_bytes / 1e6:.1f} MB, {video.encoder}"
        )
    if kind == "attempt_failed":
        failed = response.attempt_failed
        return (
            f"attempt {failed.attempt} of {failed.max_attempts} failed: {failed.reason}; trying again in "
            f"{seconds_of(failed.retry_delay):.0f}s"
        )
    if kind == "completed":
        done = response.completed
        state = gateway_pb.MeditationState.Name(done.state).removeprefix("MEDITATION_STATE_").lower()
        return f"completed: {state} in {seconds_of(done.total_duration):.2f}s"
    return f"unknown event {kind}"


def _fallback(reason: str) -> str:
    return f" — fell back to offline: {reason}" if reason else ""


def fetch_asset(uri: str, target: Path) -> None:
    """Copies an asset from a file URI (local storage) or downloads it over HTTP(S)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        shutil.copyfile(urllib.request.url2pathname(parsed.path), target)
    elif parsed.scheme in ("http", "https"):
        with urllib.request.urlopen(uri, timeout=60) as response, open(target, "wb") as stream:
            shutil.copyfileobj(response, stream)
    else:
        raise UsageError(f"cannot fetch {uri}: unsupported scheme {parsed.scheme!r}")


@dataclass
class Progress:
    """Prints events as lines; on a terminal, also keeps a live status line under them."""

    output: TextIO
    is_live: bool
    started_at: float = field(default_factory=time.monotonic)
    running: dict[str, float] = field(default_factory=dict)

    def line(self, text: str) -> None:
        """Prints one event line with the seconds since the command started."""
        self._clear()
        self.output.write(f"[{time.monotonic() - self.started_at:7.2f}s] {text}\n")
        self._status()

    def track(self, response: MeditationStreamResponse) -> None:
        """Remembers which stages are running, for the status line."""
        if response.WhichOneof("event") != "stage":
            return
        stage = gateway_pb.Stage.Name(response.stage.stage).removeprefix("STAGE_").lower()
        if response.stage.state == gateway_pb.STAGE_STATE_STARTED:
            self.running[stage] = time.monotonic()
        else:
            self.running.pop(stage, None)

    async def tick(self) -> None:
        """Refreshes the status line until cancelled."""
        while self.is_live:
            self._clear()
            self._status()
            await asyncio.sleep(0.1)

    def _clear(self) -> None:
        if self.is_live:
            self.output.write("\r\033[K")

    def _status(self) -> None:
        if self.is_live and self.running:
            now = time.monotonic()
            parts = ", ".join(f"{stage} {now - since:.1f}s" for stage, since in self.running.items())
            self.output.write(f"  … {parts}")
        self.output.flush()


# A dead letter's reason is printed on one line, at most this long.
_MAX_REASON_CHARACTERS = 200

# A stream that ended on one of these can be resumed where it stopped (ABORTED: it fell too far behind).
_RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED)


async def follow(
    stream: AsyncIterable[MeditationStreamResponse], progress: Progress, out_dir: Path
) -> tuple[str, list[Path]]:
    """Prints every event, saves each video as it arrives, and returns the meditation name and the files."""
    saved: list[Path] = []
    meditation = ""
    last_sequence = 0
    ticker = asyncio.create_task(progress.tick())
    try:
        async for response in stream:
            last_sequence = response.sequence
            progress.track(response)
            progress.line(f"#{response.sequence} {describe(response)}")
            kind = response.WhichOneof("event")
            if kind == "accepted":
                meditation = response.accepted.meditation
            elif kind == "narration_ready" and response.narration_ready.subtitles_uri:
                # Saved beside the videos, for a web page's <track> or a player that does not read the
                # MP4s' own subtitle track.
                target = out_dir / f"{meditation.rsplit('/', 1)[-1] or 'meditation'}.vtt"
                await asyncio.to_thread(fetch_asset, response.narration_ready.subtitles_uri, target)
                saved.append(target)
                progress.line(f"saved {target}")
            elif kind == "video_ready":
                quality = gateway_pb.VideoQuality.Name(response.video_ready.quality)
                suffix = quality.removeprefix("VIDEO_QUALITY_").lower()
                target = out_dir / f"{meditation.rsplit('/', 1)[-1] or 'meditation'}-{suffix}.mp4"
                await asyncio.to_thread(fetch_asset, response.video_ready.uri, target)
                saved.append(target)
                progress.line(f"saved {target}")
    except grpc.aio.AioRpcError as error:
        if meditation and error.code() in _RESUMABLE:
            progress.line(
                f"stream interrupted; resume with: stillpoint watch {meditation} --after {last_sequence}"
            )
        raise
    finally:
        ticker.cancel()
        progress.running.clear()
    return meditation, saved


async def generate(args: argparse.Namespace) -> int:
    """Creates the conversation and streams its meditation."""
    request = load_conversation(Path(args.conversation))
    progress = Progress(sys.stdout, is_live=sys.stdout.isatty())
    async with gateway_channel(args.gateway, args.api_key) as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        created = await stub.CreateConversation(request, timeout=30)
        progress.line(f"created {created.conversation.name} ({len(created.conversation.messages)} messages)")
        stream = stub.GenerateMeditation(
            gateway_pb.GenerateMeditationRequest(
                conversation=created.conversation.name, request_id=args.request_id or ""
            )
        )
        meditation, saved = await follow(stream, progress, Path(args.out))
    _report(meditation, saved)
    return 0


async def watch(args: argparse.Namespace) -> int:
    """Resumes a meditation's stream after a sequence."""
    progress = Progress(sys.stdout, is_live=sys.stdout.isatty())
    async with gateway_channel(args.gateway, args.api_key) as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        stream = stub.WatchMeditation(
            gateway_pb.WatchMeditationRequest(name=args.name, after_sequence=args.after)
        )
        meditation, saved = await follow(stream, progress, Path(args.out))
    _report(meditation or args.name, saved)
    return 0


async def stats(args: argparse.Namespace) -> int:
    """Prints the content service's cache hit and miss counts."""
    async with content_channel(args.content) as channel:
        stub = content_grpc.ContentServiceStub(channel)
        response = await stub.GetCacheStats(content_pb.GetCacheStatsRequest(), timeout=10)
    print(f"{'cache':<12} {'backend':<11} {'hits':>8} {'misses':>8} {'hit rate':>9}")
    for cache in response.caches:
        lookups = cache.hits + cache.misses
        rate = f"{100 * cache.hits / lookups:.0f}%" if lookups else "-"
        print(f"{cache.name:<12} {cache.backend:<11} {cache.hits:>8} {cache.misses:>8} {rate:>9}")
    return 0


async def pregenerate(args: argparse.Namespace) -> int:
    """Renders a list of image prompts into the image cache, reporting each as it is ready."""
    prompts = _read_prompts(Path(args.prompts)) if args.prompts else []
    width, height = SQUARE_SIZE_PIXELS if args.square else LANDSCAPE_SIZE_PIXELS
    request = content_pb.PregenerateImagesRequest(prompts=prompts, width_pixels=width, height_pixels=height)
    started = time.monotonic()
    made = cached = 0
    async with content_channel(args.content) as channel:
        stub = content_grpc.ContentServiceStub(channel)
        async for response in stub.PregenerateImages(request):
            made += 1
            cached += response.cached
            state = "already cached" if response.cached else f"made by {response.provider}"
            print(f"[{time.monotonic() - started:7.2f}s] {state}: {response.prompt[:90]}")
    print(f"{made} images in the cache ({made - cached} new, {cached} already there)")
    return 0


async def render(args: argparse.Namespace) -> int:
    """Renders one still-image video outside the services, as the media service would."""
    # Imported here: the other commands need no FFmpeg.
    import imageio_ffmpeg

    from services.media.encoders import select_h264_encoder
    from services.media.video import (
        ENHANCED_PROFILE,
        QUICK_PROFILE,
        measure_audio_seconds,
        probe_media,
        render_still_video,
    )

    image, audio, output = Path(args.image), Path(args.audio), Path(args.output)
    for path in (image, audio):
        if not path.is_file():
            raise UsageError(f"{path} does not exist")
    profile = QUICK_PROFILE if args.profile == "quick" else ENHANCED_PROFILE
    ffmpeg_path = imageio_ffmpeg.get_ffmpeg_exe()
    encoder = (await select_h264_encoder(ffmpeg_path)).selected if args.encoder == "auto" else args.encoder
    sound = await asyncio.to_thread(probe_media, audio)
    if sound.audio_codec is None:
        raise UsageError(f"{audio} has no audio stream")
    duration_seconds = await asyncio.to_thread(measure_audio_seconds, audio)
    # Narration that is already AAC is copied into a QUICK video rather than encoded again.
    is_audio_copied = sound.audio_codec == "aac" and profile.narration_filter is None
    started = time.perf_counter()
    video = await render_still_video(
        ffmpeg_path=ffmpeg_path,
        image_path=image,
        audio_path=audio,
        duration_seconds=duration_seconds,
        output_path=output,
        profile=profile,
        encoder=encoder,
        is_audio_copied=is_audio_copied,
    )
    elapsed = time.perf_counter() - started
    print(
        f"{output}: {video.width_pixels}x{video.height_pixels}, {video.duration_seconds:.2f}s, "
        f"{video.size_bytes / 1e6:.2f} MB, {video.encoder}, "
        f"audio {'copied' if is_audio_copied else 'encoded'}, rendered in {elapsed:.3f}s"
    )
    return 0


def _read_prompts(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _report(meditation: str, saved: list[Path]) -> None:
    if saved:
        print(f"\n{meditation}: your videos are ready:")
        for path in saved:
            print(f"  {path.resolve()}")


def _gateway_database_url() -> str:
    """The gateway's database, found as the gateway finds it (DATABASE_URL, else its embedded SQLite)."""
    environment = Environment(os.environ)
    try:
        var_root = environment.directory("STILLPOINT_VAR_DIR", Path("var"))
        return read_database_url(environment, gateway_migrate.default_sqlite_file(var_root))
    except ConfigError as error:
        raise UsageError(f"configuration error: {error}") from None


async def keys(args: argparse.Namespace) -> int:
    """Creates, lists or revokes API keys in the gateway's database (DATABASE_URL, as the gateway)."""
    database_url = _gateway_database_url()
    engine = create_engine(database_url)
    try:
        await gateway_migrate.HISTORY.ensure_migrated(engine, database_url)
        store = ApiKeyStore(engine)
        if args.keys_command == "create":
            made = await store.create(args.owner)
            print(made.key)
            print(
                f"API key {made.id} for owner {made.owner!r}: shown once, only its hash is kept. Send it as "
                "`authorization: Bearer <key>` (the CLI reads STILLPOINT_API_KEY).",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            for key in await store.list(args.owner or None):
                state = "revoked" if key.is_revoked else "active"
                print(f"{key.id}  {key.owner}  {key.create_time.isoformat(timespec='seconds')}  {state}")
        elif not await store.revoke(args.id):
            raise UsageError(f"no active API key has the id {args.id!r} (`stillpoint keys list` shows them)")
    except (DatabaseNotReadyError, GatewayError) as error:
        raise UsageError(str(error)) from None
    finally:
        await engine.dispose()
    return 0


async def jobs(args: argparse.Namespace) -> int:
    """Lists dead-lettered meditations from the gateway's job store (DATABASE_URL, as the gateway): whose,
    when, after how many attempts, and why; never anything of their conversation but its owner."""
    database_url = _gateway_database_url()
    engine = create_engine(database_url)
    try:
        await gateway_migrate.HISTORY.ensure_migrated(engine, database_url)
        letters = await JobStore(engine).list_dead_letters(args.limit)
    except (DatabaseNotReadyError, GatewayError) as error:
        raise UsageError(str(error)) from None
    finally:
        await engine.dispose()
    if not letters:
        print("no dead-lettered meditations", file=sys.stderr)
    for letter in letters:
        # One line each: a reason is the failure's message, flattened and cut short.
        reason = " ".join(letter.reason.split())
        reason = (
            reason if len(reason) <= _MAX_REASON_CHARACTERS else reason[: _MAX_REASON_CHARACTERS - 1] + "…"
        )
        print(
            f"{letter.name}  {letter.owner}  {letter.dead_letter_time.isoformat(timespec='seconds')}  "
            f"attempts={letter.attempts}  {reason}"
        )
    return 0


def _dead_letter_limit(value: str) -> int:
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return limit


def _request_id(value: str) -> str:
    """A UUID in any spelling Python reads (braces, upper case, urn:uuid:), sent in the canonical form the
    gateway requires (AIP-155). Empty (the default: no retries to match) stays empty."""
    if not value:
        return ""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a UUID: use one such as {uuid.uuid4()} (`uuidgen` prints one)"
        ) from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `stillpoint` console script."""
    parser = argparse.ArgumentParser(prog="stillpoint", description=__doc__)
    parser.add_argument(
        "--gateway",
        default=os.environ.get("STILLPOINT_GATEWAY_ADDRESS", "127.0.0.1:50051"),
        help="gateway host:port (default: $STILLPOINT_GATEWAY_ADDRESS or 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("STILLPOINT_API_KEY", ""),
        help="credential for the gateway (default: $STILLPOINT_API_KEY; `stillpoint keys create` makes one)",
    )
    parser.add_argument("--out", default="out", help="folder the videos are saved in (default: out)")
    commands = parser.add_subparsers(dest="command", required=True)
    generate_parser = commands.add_parser("generate", help="create a conversation and stream its meditation")
    generate_parser.add_argument("--conversation", required=True, help="conversation JSON file")
    generate_parser.add_argument(
        "--request-id",
        default="",
        type=_request_id,
        help="idempotency key for retries: a UUID (such as `uuidgen` prints), the same one for each retry",
    )
    watch_parser = commands.add_parser("watch", help="resume a meditation's stream")
    watch_parser.add_argument("name", help="meditations/{id}")
    watch_parser.add_argument("--after", type=int, default=0, help="replay events after this sequence")
    content_address = os.environ.get("STILLPOINT_CONTENT_ADDRESS", "127.0.0.1:50052")
    stats_parser = commands.add_parser("stats", help="cache hit and miss counts (from the content service)")
    stats_parser.add_argument("--content", default=content_address, help="content service host:port")
    pregenerate_parser = commands.add_parser(
        "pregenerate", help="render image prompts into the image cache (the service's list by default)"
    )
    pregenerate_parser.add_argument("--content", default=content_address, help="content service host:port")
    pregenerate_parser.add_argument("--prompts", default="", help="file with one prompt per line")
    pregenerate_parser.add_argument(
        "--square",
        action="store_true",
        help=f"{describe_size(SQUARE_SIZE_PIXELS)} instead of {describe_size(LANDSCAPE_SIZE_PIXELS)}",
    )
    render_parser = commands.add_parser("render", help="render one still-image video from an image and audio")
    render_parser.add_argument("--image", required=True, help="the still picture (PNG, JPEG, …)")
    render_parser.add_argument("--audio", required=True, help="the narration (WAV, or AAC to copy it)")
    render_parser.add_argument("--profile", choices=("quick", "enhanced"), default="quick")
    render_parser.add_argument("-o", "--output", required=True, help="the MP4 to write")
    render_parser.add_argument(
        "--encoder", default="auto", help="auto (probe GPU encoders, else libx264), libx264, h264_nvenc, …"
    )
    keys_parser = commands.add_parser("keys", help="API keys in the gateway's database (DATABASE_URL)")
    key_commands = keys_parser.add_subparsers(dest="keys_command", required=True)
    create_parser = key_commands.add_parser("create", help="make a key; it is printed once")
    create_parser.add_argument("--owner", required=True, help="whose conversations the key reaches")
    list_parser = key_commands.add_parser("list", help="list keys (never the keys themselves)")
    list_parser.add_argument("--owner", default="", help="only this owner's")
    revoke_parser = key_commands.add_parser("revoke", help="revoke a key by its id (within seconds)")
    revoke_parser.add_argument("id", help="the key's id, as `keys list` shows it")
    jobs_parser = commands.add_parser("jobs", help="meditation jobs in the gateway's database (DATABASE_URL)")
    job_commands = jobs_parser.add_subparsers(dest="jobs_command", required=True)
    dead_letters_parser = job_commands.add_parser(
        "dead-letters", help="meditations given up on after their last attempt, newest first"
    )
    dead_letters_parser.add_argument(
        "--limit", type=_dead_letter_limit, default=20, help="list at most this many (default: 20)"
    )
    args = parser.parse_args(argv)
    commands_by_name = {
        "generate": generate,
        "watch": watch,
        "stats": stats,
        "pregenerate": pregenerate,
        "render": render,
        "keys": keys,
        "jobs": jobs,
    }
    command = commands_by_name[args.command]
    try:
        return asyncio.run(command(args))
    except UsageError as error:
        print(f"stillpoint: {error}", file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as error:
        print(f"stillpoint: {error.code().name}: {error.details()}", file=sys.stderr)
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            print(
                "stillpoint: is the gateway running? `make demo` starts all three services", file=sys.stderr
            )
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
