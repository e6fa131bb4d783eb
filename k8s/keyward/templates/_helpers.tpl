{{/*
Names, labels and shared snippets of the Keyward chart.
*/}}

{{- define "keyward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource name: "<release>-keyward" unless the release name already says keyward. */}}
{{- define "keyward.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "keyward.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keyward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keyward.labels" -}}
helm.sh/chart: {{ include "keyward.chart" . }}
{{ include "keyward.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: keyward
{{- end }}

{{- define "keyward.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "keyward.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keyward.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Paths inside the image and the pods. */}}
{{- define "keyward.venv" -}}/opt/keyward/venv{{- end }}
{{- define "keyward.socketDir" -}}/sockets{{- end }}
{{- define "keyward.spoolDir" -}}/var/spool/keyward{{- end }}
{{- define "keyward.providerKeysDir" -}}/etc/keyward/provider-keys{{- end }}
{{- define "keyward.envoyConfigDir" -}}/etc/envoy{{- end }}
{{/* Envoy's admin interface: a 0600 Unix socket in an emptyDir only the envoy container mounts. */}}
{{- define "keyward.envoyAdminDir" -}}/var/run/envoy-admin{{- end }}
{{- define "keyward.envoyAdminSocket" -}}/var/run/envoy-admin/admin.sock{{- end }}
{{/* Where authz asks Envoy to reopen its logs: a 0660 Unix socket in the shared "sockets" emptyDir. */}}
{{- define "keyward.envoyControlSocket" -}}/sockets/envoy-control.sock{{- end }}
{{/*
Envoy's audit log (one JSON line per finished request) in the "outcomes" emptyDir, which both containers
mount: Envoy writes it, authz reads it, renames it to <name>.1 to rotate it and deletes that.
*/}}
{{- define "keyward.outcomesDir" -}}/var/lib/keyward-outcomes{{- end }}
{{- define "keyward.envoyAuditLog" -}}/var/lib/keyward-outcomes/envoy-audit.jsonl{{- end }}
{{- define "keyward.postgresCaDir" -}}/etc/keyward/postgres-ca{{- end }}

{{/* Secrets: the chart's own unless an existing one is named. */}}
{{- define "keyward.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- printf "%s-database" (include "keyward.fullname" .) }}
{{- end }}
{{- end }}

{{- define "keyward.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else }}
{{- "DATABASE_URL" }}
{{- end }}
{{- end }}

{{- define "keyward.appSecretName" -}}
{{- default (printf "%s-keys" (include "keyward.fullname" .)) .Values.keyward.existingSecret }}
{{- end }}

{{/* Never mounted into authz, the control plane or the migration Job: Envoy's container only. */}}
{{- define "keyward.providerSecretName" -}}
{{- default (printf "%s-provider-keys" (include "keyward.fullname" .)) .Values.providers.existingSecret }}
{{- end }}

{{/*
Environment of every Postgres client (authz, control plane, migrations): the URL and the TLS settings.
asyncpg (authz) and SQLAlchemy's asyncpg dialect (control plane) disagree on an "sslmode" URL parameter,
so TLS is set with libpq's environment variables, which asyncpg reads in both.
*/}}
{{- define "keyward.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "keyward.databaseSecretName" . }}
      key: {{ include "keyward.databaseSecretKey" . }}
{{- with .Values.database.sslMode }}
- name: PGSSLMODE
  value: {{ . | quote }}
{{- end }}
{{- if .Values.database.caSecret }}
- name: PGSSLROOTCERT
  value: {{ include "keyward.postgresCaDir" . }}/ca.crt
{{- end }}
{{- end }}

{{/* The migration Job's URL: the schema owner's when one is given, the application's otherwise. */}}
{{- define "keyward.migrationDatabaseEnv" -}}
{{- if .Values.database.migrationExistingSecret }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.migrationExistingSecret }}
      key: {{ .Values.database.migrationExistingSecretKey }}
{{- else if and .Values.database.migrationUrl (not .Values.database.existingSecret) }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "keyward.databaseSecretName" . }}
      key: MIGRATION_DATABASE_URL
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "keyward.databaseSecretName" . }}
      key: {{ include "keyward.databaseSecretKey" . }}
{{- end }}
{{- with .Values.database.sslMode }}
- name: PGSSLMODE
  value: {{ . | quote }}
{{- end }}
{{- if .Values.database.caSecret }}
- name: PGSSLROOTCERT
  value: {{ include "keyward.postgresCaDir" . }}/ca.crt
{{- end }}
{{- end }}

{{/* authz's credential for the control plane's audit ingest (authz and the control plane). */}}
{{- define "keyward.ingestTokenEnv" -}}
- name: KEYWARD_INGEST_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "keyward.appSecretName" . }}
      key: {{ .Values.keyward.ingestTokenKey }}
{{- end }}

{{/* Where authz ships audit records: the control plane's Service, inside the cluster. */}}
{{- define "keyward.ingestUrl" -}}
{{- printf "http://%s-controlplane.%s.svc:%d/api/v1/audit/ingest" (include "keyward.fullname" .) .Release.Namespace (int64 .Values.controlplane.service.port) }}
{{- end }}

{{/* Signs every audit chain head (control plane only; the database never holds it). */}}
{{- define "keyward.auditSigningKeyEnv" -}}
- name: KEYWARD_AUDIT_SIGNING_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "keyward.appSecretName" . }}
      key: {{ .Values.keyward.auditSigningKeyKey }}
{{- end }}

{{- define "keyward.tokenHashKeyEnv" -}}
- name: KEYWARD_TOKEN_HASH_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "keyward.appSecretName" . }}
      key: {{ .Values.keyward.tokenHashKeyKey }}
{{- end }}

{{- define "keyward.postgresCaVolume" -}}
{{- if .Values.database.caSecret }}
- name: postgres-ca
  secret:
    secretName: {{ .Values.database.caSecret }}
    defaultMode: 0440
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}

{{- define "keyward.postgresCaMount" -}}
{{- if .Values.database.caSecret }}
- name: postgres-ca
  mountPath: {{ include "keyward.postgresCaDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* A container's security context: the shared one plus its own UID. Called with (dict "root" $ "uid" N). */}}
{{- define "keyward.containerSecurityContext" -}}
{{- $context := deepCopy .root.Values.containerSecurityContext }}
{{- $_ := set $context "runAsUser" (int .uid) }}
{{- $_ := set $context "runAsNonRoot" true }}
{{- toYaml $context }}
{{- end }}

{{/*
A provider's upstream, parsed from its URL like controlplane/stack/envoy_config.py's Upstream.parse:
scheme, hostname, port (default 443/80), path without trailing slash, the Host header to send, and the
Envoy cluster type (STATIC for an IPv4 address, STRICT_DNS otherwise). Returned as YAML for fromYaml.
*/}}
{{- define "keyward.upstream" -}}
{{- $url := urlParse . }}
{{- if not (has $url.scheme (list "http" "https")) }}
{{- fail (printf "provider URL must be http(s)://host[:port][/path], got %q" .) }}
{{- end }}
{{- if not $url.hostname }}
{{- fail (printf "provider URL must be http(s)://host[:port][/path], got %q" .) }}
{{- end }}
{{- $default := ternary "443" "80" (eq $url.scheme "https") }}
{{- $port := $default }}
{{- if ne $url.host $url.hostname }}
{{- $port = last (splitList ":" $url.host) }}
{{- end }}
scheme: {{ $url.scheme | quote }}
hostname: {{ $url.hostname | quote }}
port: {{ $port | quote }}
path: {{ trimSuffix "/" $url.path | quote }}
hostHeader: {{ ternary $url.hostname (printf "%s:%s" $url.hostname $port) (eq $port $default) | quote }}
clusterType: {{ ternary "STATIC" "STRICT_DNS" (regexMatch "^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$" $url.hostname) | quote }}
{{- end }}

{{/*
gateway.authzTimeout in seconds, for authz (KEYWARD_ENVOY_AUTHZ_TIMEOUT_SECONDS): Envoy reads the value
as a protobuf Duration, always seconds with an "s" ("1s", "0.25s"; keyward.validate checks the form),
so one value serves both and they cannot disagree.
*/}}
{{- define "keyward.authzTimeoutSeconds" -}}
{{- trimSuffix "s" (toString .Values.gateway.authzTimeout) }}
{{- end }}

{{/* Checks that fail the install early with a readable message. */}}
{{- define "keyward.validate" -}}
{{- if and .Values.database.existingSecret .Values.database.migrationUrl (not .Values.database.migrationExistingSecret) }}
{{- fail "database.migrationUrl is only used without database.existingSecret: set database.migrationExistingSecret instead" }}
{{- end }}
{{- if and (not .Values.database.existingSecret) (not .Values.database.url) }}
{{- fail "set database.existingSecret (a Secret holding the Postgres URL) or database.url" }}
{{- end }}
{{- if not .Values.providers.existingSecret }}
{{- if or (not .Values.providers.openai.apiKey) (not .Values.providers.anthropic.apiKey) }}
{{- fail "set providers.existingSecret (a Secret with openai.json and anthropic.json, see k8s/README.md) or both providers.*.apiKey" }}
{{- end }}
{{- end }}
{{- if lt (int .Values.gateway.terminationGracePeriodSeconds) (add (int .Values.gateway.preStopSleepSeconds) (int .Values.gateway.drainSeconds) 10) }}
{{- fail "gateway.terminationGracePeriodSeconds must be at least preStopSleepSeconds + drainSeconds + 10" }}
{{- end }}
{{- /* Envoy cannot redact headers: at debug and trace it logs every client's token (k8s/README.md). */}}
{{- if and (has (lower .Values.gateway.envoy.logLevel) (list "debug" "trace")) (not .Values.gateway.envoy.allowVerboseLogging) }}
{{- fail (printf "gateway.envoy.logLevel %q logs every request header, Keyward tokens included, and Envoy cannot redact them: use warn (or info), or set gateway.envoy.allowVerboseLogging=true for a short investigation" .Values.gateway.envoy.logLevel) }}
{{- end }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]{1,9})?s$" (toString .Values.gateway.authzTimeout)) }}
{{- fail (printf "gateway.authzTimeout must be seconds with an \"s\", like 1s or 0.5s, got %q" (toString .Values.gateway.authzTimeout)) }}
{{- end }}
{{- $authzTimeout := float64 (include "keyward.authzTimeoutSeconds" .) }}
{{- if or (le $authzTimeout 0.0) (gt $authzTimeout 60.0) }}
{{- fail "gateway.authzTimeout must be more than 0s and at most 60s (authz refuses a longer one)" }}
{{- end }}
{{- if lt (int64 .Values.gateway.auditLog.rotateBytes) 65536 }}
{{- fail "gateway.auditLog.rotateBytes must be at least 65536 (authz refuses less)" }}
{{- end }}
{{- range $name := list "organization" "project" }}
{{- $value := index $.Values.providers.openai $name }}
{{- if and $value (not (regexMatch "^[!-~]+$" $value)) }}
{{- fail (printf "providers.openai.%s must be printable ASCII without spaces (it is sent as an HTTP header)" $name) }}
{{- end }}
{{- end }}
{{- end }}
