"""The Gradio search app: ``python ui/app.py --api-url http://127.0.0.1:8000``.

``build_demo(client) -> gr.Blocks`` builds the page; it talks to the omniret HTTP API only
(see omniret.serving.webui).
"""

from omniret.serving.webui import build_demo, main

__all__ = ["build_demo"]

if __name__ == "__main__":
    main()
