#!/bin/sh
# Start the MLflow tracking server with authentication, from environment variables only (no secret
# is written into an image or a repository):
#   POSTGRES_HOST, POSTGRES_USER, POSTGRES_PASSWORD  the database server; runs and users live in its
#                                                    databases `mlflow` and `mlflow_auth`
#   MLFLOW_ARTIFACTS_DESTINATION                     s3://bucket/prefix or gs://bucket/prefix
#   MLFLOW_AUTH_ADMIN_PASSWORD                       the admin's password, used on the first start
#   MLFLOW_FLASK_SERVER_SECRET_KEY                   signs the auth app's forms
#   MLFLOW_SERVER_ALLOWED_HOSTS                      Host headers clients use, e.g. mlflow.xpl.svc:5000
# The password goes into database URLs as it is: use one without URL special characters
# (e.g. `openssl rand -hex 24`).
set -eu
: "${POSTGRES_HOST:?}" "${POSTGRES_USER:?}" "${POSTGRES_PASSWORD:?}" "${MLFLOW_ARTIFACTS_DESTINATION:?}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?}" "${MLFLOW_FLASK_SERVER_SECRET_KEY:?}"
db="postgresql://${POSTGRES_USER}:${POSTGRES_PASSWORD}@${POSTGRES_HOST}:${POSTGRES_PORT:-5432}"
auth_ini="$(mktemp)"
cat > "$auth_ini" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = ${db}/mlflow_auth
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$auth_ini"
exec mlflow server --app-name basic-auth --host 0.0.0.0 --port 5000 \
    --backend-store-uri "${db}/mlflow" --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --serve-artifacts
