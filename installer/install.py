"""Install a verified bundle into a target folder, prove it healthy, or put the previous release back.

Nothing outside a staging folder changes until the bundle's signature and
every member digest have been checked and the `.env` the release needs can
be written. Every image compose will use must be in the bundle or the
engine, and the preflight checks (engine, Compose, disk space, ports) must
pass, before the first change too.

Every step after that is recorded in the target's journal before the next
one starts (see `installer.journal`), one install at a time holds the
target's lock, and a failure after the target changed brings the previous
release back.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import docker

from installer import audit, compose_files, dotenv, engine, images, policy, preflight, releases
from installer.archive import BundleFacts, VerifiedBundle, open_bundle, read_bundle
from installer.compose_cli import ComposeCommand, ServiceStatus, detect, wait_healthy
from installer.constants import ENV_FILE, STATE_DIR
from installer.envmerge import EnvChange
from installer.errors import AirlockError, InstallError, NotInstalledError, UsageError
from installer.journal import (
    COMPOSE_WRITTEN,
    FILES_WRITTEN,
    HEALTHY,
    IMAGES_LOADED,
    PREFLIGHT_PASSED,
    PREVIOUS_SAVED,
    RELEASE_SAVED,
    STARTED,
    STATE_SAVED,
    VERIFIED,
    Journal,
    JournalWriter,
    load_journal,
    now,
)
from installer.lock import TargetLock
from installer.manifest import Manifest
from installer.ownership import check_project_owner, check_target_folder
from installer.plan import Plan, make_plan
from installer.preflight import DEFAULT_RESERVE_BYTES, Finding, FreeSpace
from installer.progress import NullProgress, ProgressReporter
from installer.pull_policy import ComposeRun, PullPolicyMode, prepare_run
from installer.signing import TrustedKey
from installer.state import InstallState, Release, load_state, save_state, write_atomic
from installer.store_check import check_image_store

logger = logging.getLogger(__name__)

DEFAULT_HEALTH_TIMEOUT = 300.0


class InstallInterruptedError(InstallError):
    """Ctrl-C stopped an install or rollback at a safe point."""


class RolledBackError(InstallError):
    """The new release failed, and the previous one was brought back (or, on a first install, taken down)."""


class Interrupts:
    """Ctrl-C requests, acted on at the next safe point.

    The command's SIGINT handler calls `request`. Outside a wait it only
    records the request, so no file is left half-written; inside
    `interruptible` (the health wait) it raises KeyboardInterrupt at once.
    A second request outside a wait raises too, for an operator who must
    stop now; the journal lets the next run recover from that.
    """

    def __init__(self) -> None:
        self.requested = False
        self._waiting = False

    def request(self) -> None:
        if self._waiting or self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        if self.requested:
            raise KeyboardInterrupt
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False


@dataclass(frozen=True)
class InstallOptions:
    """Options of `airlock-install install` and `plan`."""

    bundle: Path
    target: Path
    trusted: tuple[TrustedKey, ...]
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    allow_downgrade: bool = False
    dry_run: bool = False
    # Free bytes kept beyond what the install writes, in the target and in
    # the Docker data root.
    reserve_bytes: int = DEFAULT_RESERVE_BYTES
    # Returns the free bytes of a path's filesystem; tests replace it.
    free_space: FreeSpace | None = field(default=None, compare=False)
    # Distinct trusted keys that must have signed the bundle.
    threshold: int = 1
    ignore_expiry: bool = False
    # Audit log file to append one line to, or None for no audit record.
    audit_log: Path | None = None
    # Host record of the highest sequence installed per bundle name, or None.
    host_record: Path | None = None
    # Trust store a bundle's trust update is checked against and applied to, or None.
    trust_store: Path | None = None
    # Filled in by policy.check_release for the audit record.
    audit_facts: BundleFacts = field(default_factory=BundleFacts, compare=False, repr=False)
    # What to do about services whose pull_policy or build: would pull or build.
    pull_policy: PullPolicyMode = PullPolicyMode.OVERRIDE


@dataclass
class InstallResult:
    """The outcome of an install, for the CLI to report."""

    manifest: Manifest
    signers: list[str]
    env: EnvChange
    images_loaded: list[str]
    services: list[ServiceStatus]
    unchanged: bool
    dry_run: bool = False
    plan: Plan | None = None
    # One line about an interrupted earlier run this run found, or None.
    recovered: str | None = None


@dataclass(frozen=True)
class RollbackOptions:
    """Options of `airlock-install rollback`."""

    target: Path
    to_version: str | None = None
    health_timeout: float = DEFAULT_HEALTH_TIMEOUT
    audit_log: Path | None = None


@dataclass
class RollbackResult:
    """The release running after a rollback, and its services."""

    release: Release
    left: Release | None
    services: list[ServiceStatus]
    recovered: str | None = None


@dataclass
class _Context:
    """State shared by the steps of one install."""

    options: InstallOptions
    target: Path
    environ: Mapping[str, str]
    progress: ProgressReporter
    interrupts: Interrupts
    # Set once the plan is made: the project's pull-policy decision.
    compose_run: ComposeRun | None = None


def _staging_dir(target: Path) -> Path:
    """Create this run's staging folder, removing any an earlier, killed run left.

    The caller holds the target's lock, so no other run is using them; a
    killed run's copy of the bundle would otherwise take its full size on
    disk for good.
    """
    state_dir = target / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    for leftover in state_dir.glob("staging-*"):
        logger.info("removing %s, left by an interrupted run", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix="staging-", dir=state_dir))


def _verify(options: InstallOptions, staging: Path, progress: ProgressReporter) -> VerifiedBundle:
    with open_bundle(options.bundle) as stream:
        verified = read_bundle(
            stream,
            options.trusted,
            stage_to=staging,
            progress=progress,
            total_bytes=options.bundle.stat().st_size,
            # Counting signers here stops a bundle short of signatures before
            # its payload is hashed; policy checks which keys may sign its name.
            threshold=options.threshold,
        )
    check_image_store(staging, verified.manifest)
    return verified


def _free_space_kwargs(options: InstallOptions) -> dict[str, FreeSpace]:
    return {} if options.free_space is None else {"free_space": options.free_space}


def _check_target_space(options: InstallOptions, target: Path) -> list[Finding]:
    """Check room in the target for the staged bundle and the release's files."""
    return preflight.check_space(
        "target",
        target,
        options.bundle.stat().st_size,
        options.reserve_bytes,
        what="bundle staging",
        **_free_space_kwargs(options),
    )


def _preflight(
    options: InstallOptions,
    target: Path,
    plan: Plan,
    state: InstallState | None,
    client: docker.DockerClient | None,
    info: engine.EngineInfo | None,
) -> list[Finding]:
    """Run the checks that need the plan: engine disk space, ports, images, endpoints."""
    findings: list[Finding] = []
    if info is not None:
        findings += preflight.check_engine_space(
            info, plan.load_bytes, options.reserve_bytes, **_free_space_kwargs(options)
        )
    if plan.project is not None:
        own = state.current.project_name if state is not None else None
        own = plan.project_name if own is None else own
        findings += preflight.check_ports(plan.project, client, own)
    findings += check_project_owner(client, plan.project_name, target)
    findings += check_target_folder(target)
    findings += preflight.check_images(
        client, plan.service_images, [image.tag for image in plan.images_to_load]
    )
    findings += preflight.check_endpoints(plan.env_values)
    return findings


def plan_install(
    options: InstallOptions,
    *,
    environ: Mapping[str, str] | None = None,
    progress: ProgressReporter | None = None,
) -> Plan:
    """Verify the bundle and work out what installing it would do, changing nothing.

    The bundle is staged in a temporary folder outside the target, which
    is removed before returning. Preflight findings are part of the plan;
    only a bundle that fails verification or policy raises.
    """
    environ = os.environ if environ is None else environ
    progress = progress or NullProgress()
    target = options.target.resolve()
    staging = Path(tempfile.mkdtemp(prefix="airlock-plan-"))
    try:
        verified = _verify(options, staging, progress)
        state = load_state(target)
        same_release = policy.check_release(
            state, verified, options.allow_downgrade, **policy.release_checks(options)
        )

        findings, client, info = preflight.check_engine(environ)
        compose_findings, compose_command = preflight.check_compose(environ)
        findings += compose_findings
        findings += _check_target_space(options, target)
        plan = make_plan(verified, target, state, same_release, environ, client)
        findings += preflight.check_nested_defaults(plan.project, compose_command)
        plan.findings = findings + _preflight(options, target, plan, state, client, info)
        return plan
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def install(
    options: InstallOptions,
    *,
    environ: Mapping[str, str] | None = None,
    progress: ProgressReporter | None = None,
    interrupts: Interrupts | None = None,
) -> InstallResult:
    """Verify the bundle, install it into the target and prove it healthy.

    1. Take the target's lock and read the journal of an interrupted run.
    2. Verify signature and every member into a staging folder.
    3. Reject another bundle name, an older sequence or a forged replay.
    4. Finish or undo the interrupted run the journal names.
    5. Plan: merge `.env` in memory, resolve every service's image with it.
    6. Preflight: engine, Compose, disk space, ports, images, endpoints.
    7. Load the images the engine lacks.
    8. Save the release folder and the previous release's live `.env`.
    9. Write the compose files and `.env`, run `up -d`, wait for health;
       on failure bring the previous release back.
    10. Record the release in the target's state.
    """
    environ = os.environ if environ is None else environ
    progress = progress or NullProgress()
    interrupts = interrupts or Interrupts()
    if options.dry_run:
        plan = plan_install(options, environ=environ, progress=progress)
        return _dry_run_result(plan, options)

    target = options.target.resolve()
    target_existed = target.exists()
    state_dir_existed = (target / STATE_DIR).exists()
    preflight.raise_for_errors(_check_target_space(options, target))
    lock = TargetLock(target)
    lock.acquire()
    staging: Path | None = None
    try:
        staging = _staging_dir(target)
        context = _Context(options, target, environ, progress, interrupts)
        result = _install_locked(context, staging)
    except BaseException as err:
        policy.record_install(options, target, error=err, environ=environ)
        raise
    else:
        policy.record_install(options, target, environ=environ)
        return result
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        installed = (target / STATE_DIR / "state.json").exists()
        in_progress = (target / STATE_DIR / "journal.json").exists()
        remove_state_dir = not state_dir_existed and not installed and not in_progress
        lock.release(remove=remove_state_dir)
        if remove_state_dir:
            shutil.rmtree(target / STATE_DIR, ignore_errors=True)
        if not target_existed and target.exists() and not any(target.iterdir()):
            target.rmdir()


def _dry_run_result(plan: Plan, options: InstallOptions) -> InstallResult:
    preflight.raise_for_errors(plan.findings)
    # The manifest is not kept by the plan; the CLI prints the plan instead.
    return InstallResult(
        manifest=None,  # type: ignore[arg-type]
        signers=[],
        env=plan.env,
        images_loaded=[],
        services=[],
        unchanged=plan.same_release,
        dry_run=True,
        plan=plan,
    )


def _install_locked(context: _Context, staging: Path) -> InstallResult:
    options, target, environ = context.options, context.target, context.environ

    # 1. An interrupted earlier run.
    interrupted = load_journal(target)
    if interrupted is not None:
        logger.warning("found %s", interrupted.describe())

    # 2. Verify.
    verified = _verify(options, staging, context.progress)
    manifest = verified.manifest

    # 3. Replay and downgrade.
    state = load_state(target)
    same_release = policy.check_release(
        state, verified, options.allow_downgrade, **policy.release_checks(options)
    )

    # 4. The interrupted run. The same bundle resumes below, because every
    # step is safe to repeat. Another bundle first gets the target back to
    # the release that ran before.
    recovered = None
    earlier_phases: list[str] = []
    if interrupted is not None:
        if interrupted.to_digest == verified.manifest_digest and interrupted.operation == "install":
            recovered = f"resumed {interrupted.describe()}"
            # Kept, so the journal still shows that the target changed if
            # this run stops too.
            earlier_phases = list(interrupted.phases)
        elif interrupted.target_changed():
            _undo_interrupted(context, interrupted, state)
            recovered = f"undid {interrupted.describe()}"
            state = load_state(target)
            same_release = policy.check_release(
                state, verified, options.allow_downgrade, **policy.release_checks(options)
            )
        else:
            recovered = f"cleared {interrupted.describe()}; the target was unchanged"
        logger.warning("%s", recovered)

    writer = JournalWriter(
        target,
        Journal(
            operation="install",
            phase=VERIFIED,
            pid=os.getpid(),
            started_at=now(),
            to_version=manifest.version,
            to_sequence=manifest.sequence,
            to_digest=verified.manifest_digest,
            from_version=state.current.version if state else None,
            from_sequence=state.current.sequence if state else None,
            bundle=str(options.bundle),
            compose_files=releases.compose_names(manifest),
            phases=earlier_phases,
        ),
        environ,
    )
    writer.reach(VERIFIED)

    try:
        # 5. and 6. Plan and preflight.
        findings, client, info = preflight.check_engine(environ)
        compose_findings, compose_command = preflight.check_compose(environ)
        findings += compose_findings
        preflight.raise_for_errors(findings)
        assert client is not None and compose_command is not None
        plan = make_plan(verified, target, state, same_release, environ, client)
        context.compose_run = prepare_run(
            verified, plan.env_values, environ, options.pull_policy, compose_command
        )
        findings += preflight.check_nested_defaults(plan.project, compose_command)
        findings += _preflight(options, target, plan, state, client, info)
        preflight.log_findings(findings)
        preflight.raise_for_errors(findings)
        plan.findings = findings
        _checkpoint(context, writer, PREFLIGHT_PASSED)

        # 7. Images.
        loaded = images.load_images(client, verified, context.progress)
        missing = engine.missing_images(client, sorted(set(plan.service_images.values())))
        if missing:
            lacking = sorted(n for n, tag in plan.service_images.items() if tag in missing)
            raise InstallError(
                f"image for service {', '.join(lacking)} not present after loading: "
                f"{', '.join(missing)}",
                hint="the bundle's image store does not match its manifest; rebuild the bundle",
            )
        context.compose_run.check_images(client, compose_command, plan.service_images)
        _checkpoint(context, writer, IMAGES_LOADED)

        # 8. Release folders. A resumed run must not save the live .env as the
        # previous release's, because the interrupted run already replaced it.
        releases.save_release(target, verified, plan.env_text)
        _checkpoint(context, writer, RELEASE_SAVED)
        env_path = target / ENV_FILE
        resumed_after_save = interrupted is not None and PREVIOUS_SAVED in interrupted.phases
        if state is not None and not same_release and not resumed_after_save:
            live = env_path.read_text(encoding="utf-8") if env_path.exists() else ""
            releases.save_env(target, state.current, live)
        _checkpoint(context, writer, PREVIOUS_SAVED)
    except KeyboardInterrupt as err:
        if writer.journal.target_changed():
            raise InstallInterruptedError(
                "interrupted (Ctrl-C) while resuming an interrupted install: the target "
                f"still has files of {manifest.version}",
                hint="run the same install again, or `airlock-install rollback`",
            ) from err
        writer.finish()
        running = (
            f"{state.current.version} is still installed and running"
            if state is not None
            else "nothing was installed"
        )
        raise InstallInterruptedError(
            f"interrupted (Ctrl-C) before the target's files changed: {running}",
            hint="run the same install again when ready",
        ) from err
    except BaseException:
        # This run changed no file or container of the target. The journal
        # stays only when a resumed run had, so the next run still knows.
        if not writer.journal.target_changed():
            writer.finish()
        raise

    # 9. Files, then compose; a failure from here on brings the previous release back.
    try:
        services, release_files = _switch(context, writer, verified, plan, client, compose_command)
    except (AirlockError, KeyboardInterrupt) as err:
        _recover(context, writer, verified, state, client, compose_command, err)
        raise AssertionError("unreachable") from err

    # 10. State.
    release = Release(
        version=manifest.version,
        sequence=manifest.sequence,
        manifest_digest=verified.manifest_digest,
        installed_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        project_name=plan.project_name,
        compose_files=release_files,
        signers=[key.key_id for key in verified.signers],
    )
    if same_release and state is not None:
        release = state.current
    # A release installed again with --allow-downgrade replaces its older entry.
    history = [] if state is None else [*state.history]
    if state is not None and not same_release:
        history.append(state.current)
    history = [item for item in history if item.manifest_digest != release.manifest_digest]
    highest = max(manifest.sequence, state.highest_sequence if state else 0)
    save_state(target, InstallState(manifest.name, release, history, highest))
    releases.remove_stale(
        target,
        releases.all_release_files(target),
        releases.files_of(target, manifest.sequence, manifest.version),
    )
    writer.reach(STATE_SAVED)
    writer.finish()

    return InstallResult(
        manifest=manifest,
        signers=[key.name for key in verified.signers],
        env=plan.env,
        images_loaded=loaded,
        services=services,
        unchanged=same_release and not loaded and not _env_changed(plan),
        plan=plan,
        recovered=recovered,
    )


def _env_changed(plan: Plan) -> bool:
    env = plan.env
    return bool(env.added or env.changed or env.removed or env.generated)


def _checkpoint(context: _Context, writer: JournalWriter, phase: str) -> None:
    """Record `phase`, then stop here if Ctrl-C was pressed."""
    writer.reach(phase)
    if context.interrupts.requested:
        raise KeyboardInterrupt


def _switch(
    context: _Context,
    writer: JournalWriter,
    verified: VerifiedBundle,
    plan: Plan,
    client: docker.DockerClient,
    compose_command: ComposeCommand,
) -> tuple[list[ServiceStatus], list[str]]:
    """Write the new release's files, start it and wait for it to be healthy.

    Returns the services' states and the `-f` files `up` got, relative to the target.
    """
    target = context.target
    manifest = verified.manifest
    names = releases.compose_names(manifest)
    compose_files.write_project_files(verified, target)
    _checkpoint(context, writer, COMPOSE_WRITTEN)

    env_path = target / ENV_FILE
    existing = env_path.read_text(encoding="utf-8") if env_path.exists() else None
    if plan.env_text != existing:
        write_atomic(env_path, plan.env_text.encode("utf-8"), mode=releases.ENV_MODE)
    else:
        os.chmod(env_path, releases.ENV_MODE)
    _checkpoint(context, writer, FILES_WRITTEN)

    files = releases.compose_files(target, names)
    files += images.write_image_override(target, manifest, plan.service_images)
    assert context.compose_run is not None  # set in step 5
    files += context.compose_run.write_override(target)
    # The override files are kept with the release, so a rollback to it gets them back.
    overrides = releases.save_overrides(target, manifest, files[len(names) :])
    # NOTE: a SIGKILL during `up` leaves the docker-compose child running,
    # and a rerun started at once may race it for the same containers.
    compose_command.up(target, files, plan.project_name)
    _checkpoint(context, writer, STARTED)

    with context.interrupts.interruptible():
        services = wait_healthy(
            client,
            plan.project_name,
            sorted(plan.service_images),
            timeout=context.options.health_timeout,
            progress=context.progress,
        )
    _checkpoint(context, writer, HEALTHY)
    return services, [*names, *overrides]


def _failure_text(err: BaseException) -> str:
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    return err.message if isinstance(err, AirlockError) else str(err)


def _recover(
    context: _Context,
    writer: JournalWriter,
    verified: VerifiedBundle,
    state: InstallState | None,
    client: docker.DockerClient,
    compose_command: ComposeCommand,
    err: BaseException,
) -> None:
    """Bring the previous release back after the new one failed, then raise why.

    A first install has nothing to go back to: its project is taken down,
    keeping volumes and the `.env` whose secrets they were made with.
    """
    manifest = verified.manifest
    failure = _failure_text(err)
    error_class = InstallInterruptedError if isinstance(err, KeyboardInterrupt) else RolledBackError
    what = f"{manifest.name} {manifest.version} (sequence {manifest.sequence})"
    names = releases.compose_names(manifest)

    if state is None or state.current.manifest_digest == verified.manifest_digest:
        project_name = dotenv.parse((context.target / ENV_FILE).read_text(encoding="utf-8")).get(
            "COMPOSE_PROJECT_NAME", manifest.project_name
        )
        if state is not None:
            # The same release again: nothing earlier to restore.
            writer.finish()
            raise error_class(f"{what} failed: {failure}") from err
        try:
            compose_command.down(
                context.target, releases.compose_files(context.target, names), project_name
            )
        except AirlockError as down_err:
            raise InstallError(
                f"{what} failed: {failure}\ntaking the new project down failed too: {down_err.message}",
                hint=f"run `docker-compose -p {project_name} down` in {context.target}",
            ) from err
        writer.finish()
        raise error_class(
            f"{what} failed: {failure}\nnothing to roll back to (first install): "
            f"project {project_name} was taken down, its volumes and .env kept",
            hint="fix the cause and run the same install again",
        ) from err

    previous = state.current
    logger.warning("%s failed; bringing back %s", what, previous.version)
    rollback_writer = JournalWriter(
        context.target,
        _rollback_journal(previous, state, str(context.options.bundle)),
        context.environ,
    )
    try:
        releases.bring_back(
            context.target,
            previous,
            client=client,
            command=compose_command,
            writer=rollback_writer,
            environ=context.environ,
            timeout=context.options.health_timeout,
        )
    except AirlockError as back_err:
        raise InstallError(
            f"{what} failed: {failure}\nrolling back to {previous.version} failed too: "
            f"{back_err.message}",
            hint="check the services with `airlock-install status`, then run "
            "`airlock-install rollback`",
        ) from err
    rollback_writer.finish()
    raise error_class(
        f"{what} failed: {failure}\nrolled back: the previous release {previous.version} "
        f"(sequence {previous.sequence}) is running and healthy again",
        hint="fix the cause, then install the bundle again",
    ) from err


def _rollback_journal(release: Release, state: InstallState, bundle: str | None) -> Journal:
    return Journal(
        operation="rollback",
        phase="rollback-started",
        pid=os.getpid(),
        started_at=now(),
        to_version=release.version,
        to_sequence=release.sequence,
        to_digest=release.manifest_digest,
        from_version=state.current.version,
        from_sequence=state.current.sequence,
        bundle=bundle,
        compose_files=list(release.compose_files),
    )


def _undo_interrupted(context: _Context, interrupted: Journal, state: InstallState | None) -> None:
    """Put back the release that ran before an interrupted run of another bundle."""
    if state is None:
        # An interrupted first install: the next install replaces its files.
        return
    release = state.current
    client = engine.connect(context.environ)
    compose_command = detect(context.environ)
    writer = JournalWriter(
        context.target,
        _rollback_journal(release, state, interrupted.bundle),
        context.environ,
    )
    releases.bring_back(
        context.target,
        release,
        client=client,
        command=compose_command,
        writer=writer,
        environ=context.environ,
        timeout=context.options.health_timeout,
    )
    writer.finish()


def rollback(
    options: RollbackOptions,
    *,
    environ: Mapping[str, str] | None = None,
    progress: ProgressReporter | None = None,
) -> RollbackResult:
    """Bring an installed release back: by default the one before the current.

    After an interrupted install or rollback, the default is the release
    that ran before it. `to_version` picks any release the state lists.
    """
    environ = os.environ if environ is None else environ
    target = options.target.resolve()
    state = load_state(target)
    if state is None:
        interrupted = load_journal(target)
        if interrupted is not None:
            # NOTE: an interrupted first install has no earlier release to
            # bring back; finishing it is the way forward.
            raise UsageError(
                f"nothing to roll back to in {target}: {interrupted.describe()}",
                hint="run the same install again to finish it",
            )
        raise NotInstalledError(target)
    audit_log = options.audit_log or audit.resolve_log_path(None, environ)
    chosen: Release | None = None
    try:
        with TargetLock(target):
            result = _rollback_locked(options, target, environ, progress)
        chosen = result.release
    except BaseException as err:
        _audit_rollback(audit_log, state.name, chosen, options, target, environ, err)
        raise
    _audit_rollback(audit_log, state.name, chosen, options, target, environ, None)
    return result


def _audit_rollback(
    path: Path,
    name: str,
    release: Release | None,
    options: RollbackOptions,
    target: Path,
    environ: Mapping[str, str],
    error: BaseException | None,
) -> None:
    """Append the rollback's audit line; a log that cannot be written is logged, not raised."""
    record = audit.AuditRecord(
        action="rollback",
        result=audit.result_of(error),
        bundle=name,
        version=None if release is None else release.version,
        sequence=None if release is None else release.sequence,
        manifest_digest=None if release is None else release.manifest_digest,
        error_class=None if error is None else type(error).__name__,
        error_message=None if error is None else str(error),
        flags={"to": options.to_version},
        target=str(target),
    )
    try:
        audit.append(path, record, environ=environ)
    except AirlockError as err:
        logger.error("this rollback is not in the audit log: %s", err)


def _rollback_locked(
    options: RollbackOptions,
    target: Path,
    environ: Mapping[str, str],
    progress: ProgressReporter | None,
) -> RollbackResult:
    """Do the rollback with the target's lock held."""
    state = load_state(target)
    assert state is not None
    interrupted = load_journal(target)
    release = _rollback_choice(state, interrupted, options.to_version)
    if interrupted is None and release.manifest_digest != state.current.manifest_digest:
        # The operator's edits since the current release was installed
        # go with it, so that going forward again restores them.
        releases.save_env(target, state.current, (target / ENV_FILE).read_text(encoding="utf-8"))
    writer = JournalWriter(
        target,
        _rollback_journal(release, state, None),
        environ,
    )
    services = releases.bring_back(
        target,
        release,
        client=engine.connect(environ),
        command=detect(environ),
        writer=writer,
        environ=environ,
        timeout=options.health_timeout,
        progress=progress,
    )
    left = state.current if release.manifest_digest != state.current.manifest_digest else None
    releases.record_current(target, state, release)
    writer.finish()
    return RollbackResult(release, left, services, interrupted.describe() if interrupted else None)


def _rollback_choice(
    state: InstallState, interrupted: Journal | None, to_version: str | None
) -> Release:
    known = [state.current, *state.history]
    if to_version is not None:
        matches = [release for release in known if release.version == to_version]
        if not matches:
            listed = ", ".join(f"{r.version} (sequence {r.sequence})" for r in known)
            raise UsageError(
                f"release {to_version} is not installed in this target; known: {listed}"
            )
        return max(matches, key=lambda release: release.sequence)
    if interrupted is not None:
        if interrupted.operation == "rollback":
            for release in known:
                if release.manifest_digest == interrupted.to_digest:
                    return release
        return state.current
    earlier = [release for release in state.history if release.sequence < state.current.sequence]
    if not earlier:
        raise UsageError(
            f"no release older than {state.current.version} (sequence "
            f"{state.current.sequence}) is recorded in this target",
            hint="name one with --to VERSION; `airlock-install status` lists them",
        )
    return max(earlier, key=lambda release: release.sequence)
