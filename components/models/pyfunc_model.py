"""The generator's pyfunc model, logged from code (MLflow's models-from-code).

``pyfunc.log_generator`` logs this file, not a pickled object: MLflow copies it into the model
and runs it on load, and the ``set_model`` call at the end hands MLflow the model. It reads
the generator folder from the model's ``generator`` artifact. Imports are absolute: MLflow runs
the file as a module of its own, outside the ``components.models`` package.
"""
from __future__ import annotations

import mlflow
from mlflow.models import set_model

from components.models.pyfunc import ARTIFACT, GenerationRequest, decode_refs, generate_images, png_b64


class GeneratorModel(mlflow.pyfunc.PythonModel):
    """A SubjectGenerator folder: a list of GenerationRequest in, one base64 PNG per request out. A
    request it cannot draw (see ``pyfunc.check_request``) raises ``pyfunc.RequestError``: a served
    model answers it with 400 and the message."""

    def load_context(self, context):
        from components.models.generator import SubjectGenerator
        from components.models.sampling import SamplingSettings

        folder = context.artifacts[ARTIFACT]
        self.generator = SubjectGenerator.from_pretrained(folder).eval()
        self.sampling = SamplingSettings.load(folder)  # what the generator was benchmarked with

    def predict(self, model_input: list[GenerationRequest], params=None) -> list[str]:
        return [png_b64(generate_images(self.generator, self.sampling, r.prompt, decode_refs(r.refs), r.seed, r.steps,
                                        r.guidance)) for r in model_input]


set_model(GeneratorModel())
