"""Local web pages over the Python API: the label page, where a person ranks a model's answers.

    from scratchlm.serve.label_app import LabelQueue, create_app

The app is a FastAPI factory (tested through FastAPI's TestClient, and in a headless browser);
`scratchlm label` serves it with uvicorn on 127.0.0.1.
"""
