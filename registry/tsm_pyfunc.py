"""The models-from-code entry of every logged TSM model (see `registry.pyfunc`).

MLflow copies this file into the logged model and runs it when the model is
loaded: it builds the pyfunc wrapper from this project's code, so nothing is
unpickled. Loading needs the project installed (`import registry` works).
"""

from mlflow.models import set_model

from registry.pyfunc import TSMClassifier

set_model(TSMClassifier())
