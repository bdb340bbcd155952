"""The omniret search demo: a Gradio app that talks to the omniret HTTP API only.

    python ui/app.py --api-url http://127.0.0.1:8000 [--port 7860] [--api-key TOKEN]

(ui/app.py is the entry point; the app lives in the package so the demo command and the container
image import it like any other module.)

Search by text, an image, a video, a PDF page, or text together with an image; results show as a
gallery with thumbnails, page or time span, and both scores (vector/hybrid and reranker). The
upload tab sends files to the API's ingest endpoint. Gradio analytics are off and nothing is
fetched from the internet at start.
"""

from __future__ import annotations

import argparse
import base64
import io
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # after the environment above: gradio reads it at import
from PIL import Image

from omniret.serving.client import ApiError, OmniretClient

MODALITIES = ["image", "page", "video"]


def caption(result: dict) -> str:
    """One line under a thumbnail: where the hit is and both scores."""
    where = result["source_uri"].rsplit("/", 1)[-1]
    if result.get("page") is not None:
        where += f" p.{result['page'] + 1}"
    if result.get("t_start") is not None:
        where += f" {result['t_start']:.1f}-{result['t_end']:.1f}s"
    score = f"score {result['score']:.3f}" if result.get("score") is not None else ""
    if result.get("rerank_score") is not None:
        score += f" | rerank {result['rerank_score']:.3f}"
    return f"{where} | {score}"


def thumbnail(result: dict) -> Image.Image:
    data = result.get("thumbnail")
    if not data:
        return Image.new("RGB", (64, 64), "lightgray")
    return Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))).convert("RGB")


def build_demo(client: OmniretClient) -> gr.Blocks:
    """The Blocks app; every action is an HTTP call through ``client``."""

    def search(text, image, video, pdf, page, top_k, modality, hybrid, rerank):
        if not (text or image or video or pdf):
            return [], "Enter text, or give an image, a video or a PDF page."
        try:
            body = client.search(text=text or None, image=image, video=video, pdf=pdf, page=int(page or 1) - 1,
                                 top_k=int(top_k), modality=modality or None, hybrid=bool(hybrid and text),
                                 rerank=bool(rerank))
        except ApiError as exc:
            return [], f"**Error:** {exc.message}" + (f" (field `{exc.param}`)" if exc.param else "")
        results = body["results"]
        status = f"{len(results)} results ({body['mode']}{', reranked' if body['reranked'] else ''})"
        return [(thumbnail(r), caption(r)) for r in results], status

    def ingest(files):
        if not files:
            return "Choose files to ingest."
        try:
            job = client.ingest(files if isinstance(files, list) else [files])
        except ApiError as exc:
            return f"**Error:** {exc.message}"
        return f"Ingest job `{job['job_id']}` started for {len(job['files'])} file(s); status: {job['status']}"

    def status(job_id):
        try:
            return f"```\n{client.ingest_status(job_id.strip())}\n```"
        except ApiError as exc:
            return f"**Error:** {exc.message}"

    with gr.Blocks(title="omniret search") as demo:
        gr.Markdown("# omniret\nSearch images, videos and PDF pages by text, image, video or page.")
        with gr.Tab("Search"):
            with gr.Row():
                with gr.Column(scale=1):
                    text = gr.Textbox(label="Query text", elem_id="query-text")
                    image = gr.Image(label="Query image", type="filepath")
                    video = gr.Video(label="Query video")
                    with gr.Row():
                        pdf = gr.File(label="Query PDF", file_types=[".pdf"], type="filepath")
                        page = gr.Number(label="Page", value=1, precision=0, minimum=1)
                    with gr.Accordion("Options", open=False):
                        top_k = gr.Slider(1, 50, value=8, step=1, label="Results")
                        modality = gr.CheckboxGroup(MODALITIES, label="Only these kinds (none: all)")
                        hybrid = gr.Checkbox(label="Hybrid (vector + full text)", value=False)
                        rerank = gr.Checkbox(label="Rerank with the yes/no reranker", value=False)
                    go = gr.Button("Search", variant="primary", elem_id="search-button")
                with gr.Column(scale=2):
                    status_md = gr.Markdown(elem_id="search-status")
                    gallery = gr.Gallery(label="Results", columns=4, height="auto", elem_id="results")
            inputs = [text, image, video, pdf, page, top_k, modality, hybrid, rerank]
            go.click(search, inputs, [gallery, status_md])
            text.submit(search, inputs, [gallery, status_md])
        with gr.Tab("Add files"):
            files = gr.File(label="Images, videos or PDFs", file_count="multiple", type="filepath")
            send = gr.Button("Ingest")
            ingest_md = gr.Markdown()
            send.click(ingest, files, ingest_md)
            job = gr.Textbox(label="Job id")
            check = gr.Button("Check status")
            job_md = gr.Markdown()
            check.click(status, job, job_md)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-url", default=os.environ.get("OMNIRET_API_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=os.environ.get("OMNIRET_API_KEY"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args(argv)
    demo = build_demo(OmniretClient(args.api_url, args.api_key))
    demo.launch(server_name=args.host, server_port=args.port, footer_links=[])


if __name__ == "__main__":
    main()
