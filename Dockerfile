# The Airflow image every service of docker-compose.yml runs: the official Airflow 3.3.2 image (it
# brings the Celery provider, psycopg2 and asyncpg) plus this project, installed from the same
# uv.lock `make` uses, so the containers run the versions the tests ran.
FROM apache/airflow:3.3.2-python3.11

USER root
# The working area, the logs and the simple auth manager's password file live on named volumes; a
# new volume takes its owner from the image's folder, so all belong to the airflow user from the start.
RUN mkdir -p /opt/audiences/var /opt/airflow/auth /opt/airflow/logs \
 && chown -R airflow:root /opt/audiences /opt/airflow/auth /opt/airflow/logs
USER airflow
WORKDIR /opt/audiences

# Dependencies first (only the lock changes them), so editing code does not reinstall them.
COPY --chown=airflow:root pyproject.toml uv.lock README.md ./
RUN pip install --no-cache-dir uv==0.13.9 \
 && uv export --frozen --no-dev --no-hashes --no-emit-project -o /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY --chown=airflow:root tasks ./tasks
COPY --chown=airflow:root dags ./dags
COPY --chown=airflow:root config ./config
COPY --chown=airflow:root expectations ./expectations
RUN pip install --no-cache-dir --no-deps -e /opt/audiences

ENV AUDIENCES_HOME=/opt/audiences/var \
    AUDIENCES_CONFIG=/opt/audiences/config \
    AUDIENCES_EXPECTATIONS=/opt/audiences/expectations \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/audiences/dags
