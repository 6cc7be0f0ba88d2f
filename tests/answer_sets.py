"""Named answer sets: every supported combination the template's tests bake.

A feature that adds an option adds the answer sets that exercise it here, with
the files it expects present or removed; every test then runs on every set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pythons import DEFAULT as DEFAULT_PYTHON

# Files every bake has, relative to the project root ({package} is replaced).
CORE_FILES = (
    ".env",
    ".env.example",
    ".flaskenv",
    ".gitignore",
    ".pre-commit-config.yaml",
    "Makefile",
    "README.md",
    "pyproject.toml",
    "wsgi.py",
    "gunicorn.conf.py",
    "Dockerfile",
    ".dockerignore",
    "compose.yaml",
    "migrations/alembic.ini",
    "migrations/env.py",
    "migrations/script.py.mako",
    "src/{package}/__init__.py",
    "src/{package}/py.typed",
    "src/{package}/config.py",
    "src/{package}/extensions.py",
    "src/{package}/errors.py",
    "src/{package}/openapi.py",
    "src/{package}/secret_key.py",
    "src/{package}/bodies.py",
    "src/{package}/database.py",
    "src/{package}/pools.py",
    "src/{package}/security.py",
    "src/{package}/text.py",
    "src/{package}/resilience/__init__.py",
    "src/{package}/resilience/store.py",
    "src/{package}/resilience/limits.py",
    "src/{package}/resilience/breakers.py",
    "src/{package}/resilience/backpressure.py",
    "src/{package}/resilience/idempotency.py",
    "src/{package}/resilience/protect.py",
    "src/{package}/resilience/redis_cache.py",
    "src/{package}/services/__init__.py",
    "src/{package}/services/http.py",
    "src/{package}/services/pricing.py",
    "src/{package}/cli.py",
    "src/{package}/models/__init__.py",
    "src/{package}/models/item.py",
    "src/{package}/models/user.py",
    "src/{package}/auth/__init__.py",
    "src/{package}/auth/api.py",
    "src/{package}/auth/attempts.py",
    "src/{package}/auth/commands.py",
    "src/{package}/auth/common_passwords.txt",
    "src/{package}/auth/keys.py",
    "src/{package}/auth/passwords.py",
    "src/{package}/auth/principal.py",
    "src/{package}/auth/schemas.py",
    "src/{package}/auth/tokens.py",
    "src/{package}/auth/users.py",
    "migrations/versions/20261201_0002_create_accounts.py",
    "migrations/versions/20261207_0003_item_owners_and_key_expiry.py",
    "src/{package}/api/__init__.py",
    "src/{package}/api/items.py",
    "src/{package}/api/schemas.py",
    "src/{package}/api/docs.py",
    "src/{package}/health/__init__.py",
    "src/{package}/health/routes.py",
    "src/{package}/observability/__init__.py",
    "src/{package}/observability/logs.py",
    "src/{package}/observability/metrics.py",
    "src/{package}/observability/requests.py",
    "src/{package}/observability/views.py",
    "src/{package}/resilience/events.py",
    "src/{package}/resilience/memory_cache.py",
    "tests/conftest.py",
    "tests/test_factory.py",
    "tests/test_config.py",
    "tests/test_errors.py",
    "tests/test_items.py",
    "tests/test_health.py",
    "tests/test_cli.py",
    "tests/test_migrations.py",
    "tests/test_openapi.py",
    "tests/test_bodies.py",
    "tests/test_database.py",
    "tests/test_pools.py",
    "tests/test_security.py",
    "tests/test_gunicorn.py",
    "tests/test_wsgi.py",
    "tests/test_resilience.py",
    "tests/test_redis.py",
    "tests/test_auth.py",
    "tests/test_observability.py",
    "benchmarks/limits.py",
)

# Paths no bake may contain (template scaffolding the hooks consume).
CORE_ABSENT = ("licenses",)

# The web UI (web_ui=yes): pages, forms, templates, stylesheet and their tests.
WEB_UI_FILES = (
    "src/{package}/web/__init__.py",
    "src/{package}/web/forms.py",
    "src/{package}/web/views.py",
    "src/{package}/web/templates/web/base.html",
    "src/{package}/web/templates/web/_forms.html",
    "src/{package}/web/templates/web/login.html",
    "src/{package}/web/templates/web/register.html",
    "src/{package}/web/templates/web/profile.html",
    "src/{package}/web/static/app.css",
    "tests/test_web.py",
    "tests/test_browser.py",
)
# OpenID Connect sign-in (use_oauth=yes).
OIDC_FILES = ("src/{package}/auth/oidc.py", "tests/test_oidc.py")
# Background jobs (use_celery=yes): the Celery app, its tasks and their tests.
CELERY_FILES = (
    "make_celery.py",
    "src/{package}/tasks/__init__.py",
    "tests/test_tasks.py",
    "tests/test_worker.py",
    "tests/fake_smtp.py",
)
CELERY_ABSENT = ("make_celery.py", "src/{package}/tasks", "tests/test_tasks.py")
# The generated GitHub Actions workflow (ci=github).
CI_FILES = (".github/workflows/ci.yml",)
CI_ABSENT = (".github",)
# What an API-only project (web_ui=no) has nothing of.
WEB_UI_ABSENT = ("src/{package}/web", "tests/test_web.py", "tests/test_browser.py")
# Tracing with OpenTelemetry (use_opentelemetry=yes).
OTEL_FILES = ("src/{package}/observability/tracing.py", "tests/test_tracing.py")
OTEL_ABSENT = OTEL_FILES


@dataclass(frozen=True)
class AnswerSet:
    """Answers for one bake and what the generated tree must then contain."""

    name: str
    answers: dict[str, str]
    present: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    # Values the rendered project must contain somewhere (proves the answer landed).
    mentions: dict[str, str] = field(default_factory=dict)
    # The Celery broker the boot test (tests/test_boot.py) gives the set:
    # "redis" (REDIS_URL, compose's choice) or "rabbitmq" (CELERY_BROKER_URL).
    broker: str = "redis"

    @property
    def python_version(self) -> str:
        """The Python the set's project is made for, and its suite runs on."""
        return self.answers.get("python_version", DEFAULT_PYTHON)


# The five yes/no options (web_ui, use_oauth, use_celery, use_opentelemetry,
# ci) meet in every pair of values in at least one set: all on, all off, the
# defaults, and three more (tests/test_answer_sets.py checks the pairs);
# python_version and the license vary alongside. Every set gets the full
# checks, so sets stay few. Each set's suite runs on its own python_version,
# and the default set's on every offered Python (tests/test_pythons.py), so
# each Python runs at least two sets; the all-on set is on a Python Debian
# ships (3.13 or 3.14), for which the container tests build images.
ANSWER_SETS = {
    answer_set.name: answer_set
    for answer_set in (
        AnswerSet(
            # web_ui yes, use_oauth no, use_celery yes, use_opentelemetry no,
            # ci github.
            name="default",
            answers={},
            present=("LICENSE", *WEB_UI_FILES, *CELERY_FILES, *CI_FILES),
            absent=(*OIDC_FILES, *OTEL_ABSENT),
            mentions={
                "LICENSE": "MIT License",
                "pyproject.toml": 'license = "MIT"',
                # Flask's own templates, copied as they are (not rendered).
                "src/{package}/web/templates/web/base.html": (
                    "{{ config.SERVICE_NAME }}"
                ),
            },
        ),
        AnswerSet(
            name="apache-py311",
            answers={
                "project_name": "Inventory API",
                "open_source_license": "Apache-2.0",
                "python_version": "3.11",
                "version": "1.0.0rc1",
                "web_ui": "no",
                "use_oauth": "yes",
                "use_celery": "yes",
                "use_opentelemetry": "yes",
                "ci": "none",
            },
            present=("LICENSE", *OIDC_FILES, *CELERY_FILES, *OTEL_FILES),
            absent=(*WEB_UI_ABSENT, *CI_ABSENT),
            broker="rabbitmq",
            mentions={
                "LICENSE": "Apache License",
                "pyproject.toml": 'version = "1.0.0rc1"',
                "README.md": "the deployment target is Python\n3.11.",
            },
        ),
        AnswerSet(
            # Every option off.
            name="bsd-py312",
            answers={
                "project_name": "Ledger Service",
                "open_source_license": "BSD-3-Clause",
                "python_version": "3.12",
                "web_ui": "no",
                "use_oauth": "no",
                "use_celery": "no",
                "use_opentelemetry": "no",
                "ci": "none",
            },
            present=("LICENSE",),
            absent=(
                *WEB_UI_ABSENT,
                *OIDC_FILES,
                *CELERY_ABSENT,
                *OTEL_ABSENT,
                *CI_ABSENT,
            ),
            mentions={"LICENSE": "BSD 3-Clause License"},
        ),
        AnswerSet(
            # Every option on; quotes, non-ASCII and the longest package name
            # the hook allows.
            name="closed-py313-long-name",
            answers={
                "project_name": 'Zoë\'s "Quoted" Inventory & Stock-Keeping Svc',
                "description": 'Tracks "stock" for Zoë & co.',
                "author_name": "Zoë O'Brien",
                "open_source_license": "Not open source",
                "python_version": "3.13",
                "web_ui": "yes",
                "use_oauth": "yes",
                "use_celery": "yes",
                "use_opentelemetry": "yes",
                "ci": "github",
            },
            present=(
                *WEB_UI_FILES,
                *OIDC_FILES,
                *CELERY_FILES,
                *OTEL_FILES,
                *CI_FILES,
            ),
            absent=("LICENSE",),
            mentions={"pyproject.toml": "Private :: Do Not Upload"},
        ),
        AnswerSet(
            name="web-oauth-no-jobs",
            answers={
                "project_name": "Members Portal",
                "web_ui": "yes",
                "use_oauth": "yes",
                "use_celery": "no",
                "use_opentelemetry": "no",
                "ci": "none",
            },
            present=("LICENSE", *WEB_UI_FILES, *OIDC_FILES),
            absent=(*CELERY_ABSENT, *OTEL_ABSENT, *CI_ABSENT),
        ),
        AnswerSet(
            name="api-ci-no-jobs",
            answers={
                "project_name": "Rates API",
                "open_source_license": "Apache-2.0",
                "python_version": "3.14",
                "web_ui": "no",
                "use_oauth": "no",
                "use_celery": "no",
                "use_opentelemetry": "yes",
                "ci": "github",
            },
            present=("LICENSE", *OTEL_FILES, *CI_FILES),
            absent=(*WEB_UI_ABSENT, *OIDC_FILES, *CELERY_ABSENT),
        ),
    )
}
