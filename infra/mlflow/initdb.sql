-- The second database of the MLflow server: users and permissions of the basic-auth app.
CREATE DATABASE mlflow_auth;
