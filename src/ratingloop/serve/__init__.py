"""Stage 2, serving: the FastAPI app (feedback API now; chat backends and the web page later)."""
