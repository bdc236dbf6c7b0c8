"""The workflows of the pgqrs durable workflow guide, as plain Django code."""

from __future__ import annotations

from django_pgqrs import Workflow, step, workflow


def summary(data: dict) -> str:
    """Show a dict as the guide's output does, with its lists elided as [...]."""
    items = (
        f"{key!r}: {'[...]' if isinstance(value, list) else repr(value)}"
        for key, value in data.items()
    )
    return "{" + ", ".join(items) + "}"


# --- The data pipeline -------------------------------------------------------------------------


@step
def fetch_data(ctx: Workflow, url: str) -> dict:
    """Fetch data from an external source."""
    print(f"[fetch_data] Fetching from {url}")
    # A real step would call the API here.
    return {
        "url": url,
        "records": [
            {"id": 1, "name": "Alice"},
            {"id": 2, "name": "Bob"},
        ],
    }


@step
def transform_data(ctx: Workflow, data: dict) -> dict:
    """Transform the fetched data."""
    print(f"[transform_data] Processing {len(data['records'])} records")
    transformed = [
        {"id": record["id"], "name": record["name"].upper(), "processed": True}
        for record in data["records"]
    ]
    return {"records": transformed, "count": len(transformed)}


@step
def save_results(ctx: Workflow, results: dict) -> str:
    """Save the processed results."""
    print(f"[save_results] Saving {results['count']} records")
    return f"Saved {results['count']} records successfully"


@workflow
def data_pipeline(ctx: Workflow, url: str) -> str:
    """A durable data processing pipeline."""
    print(f"[workflow] Starting pipeline for {url}")

    # Each step is tracked independently.
    data = fetch_data(ctx, url)
    print(f"[workflow] Fetched data: {summary(data)}")

    results = transform_data(ctx, data)
    print(f"[workflow] Transformed: {summary(results)}")

    message = save_results(ctx, results)
    print(f"[workflow] Complete: {message}")

    return message


# --- The crash demo ----------------------------------------------------------------------------

# Simulate a crash on the first run.
SIMULATE_CRASH = True


@step
def step_one(ctx: Workflow, data: str) -> str:
    print("[step_one] Executing")
    return f"processed_{data}"


@step
def step_two(ctx: Workflow, data: str) -> str:
    global SIMULATE_CRASH

    print("[step_two] Executing")

    if SIMULATE_CRASH:
        SIMULATE_CRASH = False
        print("[step_two] SIMULATING CRASH!")
        raise RuntimeError("Simulated crash!")

    return f"step2_{data}"


@workflow
def crash_demo(ctx: Workflow, input_data: str) -> str:
    result1 = step_one(ctx, input_data)
    print(f"After step_one: {result1}")

    result2 = step_two(ctx, result1)
    print(f"After step_two: {result2}")

    return result2
