{{/*
Chart name, truncated to 63 chars (the DNS label limit of Kubernetes names).
*/}}
{{- define "emporium.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. If the release name already contains the chart name it is used
as is (release "emporium" -> "emporium", not "emporium-emporium").
*/}}
{{- define "emporium.fullname" -}}
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

{{- define "emporium.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Standard labels (https://kubernetes.io/docs/concepts/overview/working-with-objects/common-labels/).
*/}}
{{- define "emporium.labels" -}}
helm.sh/chart: {{ include "emporium.chart" . }}
{{ include "emporium.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: emporium
{{- end }}

{{/*
Selector labels: immutable on a StatefulSet, so only name and instance.
*/}}
{{- define "emporium.selectorLabels" -}}
app.kubernetes.io/name: {{ include "emporium.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector of the server pod. The component label keeps the migration Job's pod (component
"migrations") out of the Services, the PodDisruptionBudget and the StatefulSet.
*/}}
{{- define "emporium.serverSelectorLabels" -}}
{{ include "emporium.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
The payment service (payment.mode = kafka): its name and pod selector.
*/}}
{{- define "emporium.paymentServiceName" -}}
{{- printf "%s-payment" (include "emporium.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "emporium.paymentServiceSelectorLabels" -}}
{{ include "emporium.selectorLabels" . }}
app.kubernetes.io/component: payment-service
{{- end }}

{{- define "emporium.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "emporium.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "emporium.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The Secret holding the JWT key and the backend URLs: existingSecret, or the chart's own.
*/}}
{{- define "emporium.secretName" -}}
{{- default (include "emporium.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "emporium.configMapName" -}}
{{- printf "%s-config" (include "emporium.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "emporium.headlessServiceName" -}}
{{- printf "%s-headless" (include "emporium.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The JWT signing key for the chart-managed Secret: the value given, else the one already in
the cluster (so an upgrade does not log everybody out), else a new random one.
`lookup` returns nothing under `helm template` / --dry-run, so those show a random key.
*/}}
{{- define "emporium.jwtSecret" -}}
{{- if .Values.auth.jwtSecret }}
{{- .Values.auth.jwtSecret }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "emporium.fullname" .) }}
{{- $key := .Values.secretKeys.jwtSecret }}
{{- if and $existing $existing.data (hasKey $existing.data $key) }}
{{- index $existing.data $key | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Environment shared by the server and the migration Job: the backend URLs from the Secret.
Argument: dict "ctx" $ "secret" <secret name>.
*/}}
{{- define "emporium.backendEnv" -}}
{{- $v := .ctx.Values }}
{{- if $v.mysql.enabled }}
- name: EMPORIUM__STORE__URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ $v.secretKeys.storeUrl }}
- name: EMPORIUM__STORE__MAX_CONNECTIONS
  value: {{ $v.mysql.maxConnections | quote }}
{{- end }}
{{- if $v.kafka.enabled }}
- name: EMPORIUM__BUS__KIND
  value: kafka
- name: EMPORIUM__BUS__BROKERS
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ $v.secretKeys.busBrokers }}
{{- end }}
{{- if $v.mongodb.enabled }}
- name: EMPORIUM__CATALOG__URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ $v.secretKeys.catalogUrl }}
{{- end }}
{{- if $v.elasticsearch.enabled }}
- name: EMPORIUM__SEARCH__URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ $v.secretKeys.searchUrl }}
{{- end }}
{{- if eq $v.payment.mode "kafka" }}
# The saga publishes order_created and waits for the payment service's outcome.
- name: EMPORIUM__PAYMENT__MODE
  value: kafka
{{- end }}
{{- if $v.cluster.enabled }}
# Cluster mode: the pod's name is its member id, its headless DNS name its peer URL.
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: EMPORIUM__CLUSTER__ENABLED
  value: "true"
- name: EMPORIUM__CLUSTER__NODE_ID
  value: "$(POD_NAME)"
- name: EMPORIUM__CLUSTER__ADVERTISE_URL
  value: "http://$(POD_NAME).{{ include "emporium.headlessServiceName" .ctx }}.{{ .ctx.Release.Namespace }}.svc:{{ $v.containerPort }}"
- name: EMPORIUM__CLUSTER__SHARDS
  value: {{ $v.cluster.shards | quote }}
- name: EMPORIUM__CLUSTER__LEASE_TTL_MS
  value: {{ $v.cluster.leaseTtlMs | quote }}
{{- end }}
{{- if $v.telemetry.otlpEndpoint }}
- name: EMPORIUM__TELEMETRY__OTLP_ENDPOINT
  value: {{ $v.telemetry.otlpEndpoint | quote }}
{{- end }}
{{- end }}

{{/*
Checks that the schema cannot express (or that must hold even with
--skip-schema-validation). Included from the StatefulSet so they run on every render.
*/}}
{{- define "emporium.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.cluster.enabled) }}
{{- fail (printf "replicaCount=%d needs cluster.enabled=true: each SKU's inventory actor must have exactly one owner, and without cluster mode two pods would both reserve the same stock and oversell. Turn cluster mode on (MySQL store) or keep replicaCount at 1." (int .Values.replicaCount)) }}
{{- end }}
{{- if and .Values.cluster.enabled (not .Values.mysql.enabled) }}
{{- fail "cluster.enabled=true needs mysql.enabled=true: the replicas share the store's lease table; the embedded SQLite file lives on one pod's volume and cannot be shared." }}
{{- end }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int .Values.shutdownGraceSecs) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than shutdownGraceSecs (%d), or the kubelet kills the server while it drains orders." (int .Values.terminationGracePeriodSeconds) (int .Values.shutdownGraceSecs)) }}
{{- end }}
{{- if not .Values.existingSecret }}
{{- range $name := list "mysql" "kafka" "mongodb" "elasticsearch" }}
{{- $b := index $.Values $name }}
{{- if and $b.enabled (not (or $b.url $b.brokers)) }}
{{- fail (printf "%s.enabled is true but neither %s.%s nor existingSecret is set." $name $name (ternary "brokers" "url" (eq $name "kafka"))) }}
{{- end }}
{{- end }}
{{- end }}
{{- if eq .Values.payment.mode "kafka" }}
{{- if not .Values.kafka.enabled }}
{{- fail "payment.mode=kafka needs kafka.enabled=true: orders reach the payment service and its outcomes come back only through Kafka." }}
{{- end }}
{{- if and (not .Values.existingSecret) (not .Values.paymentService.storeUrl) }}
{{- fail "payment.mode=kafka needs paymentService.storeUrl (or existingSecret with the paymentStoreUrl key): the payment service keeps its outbox and the orders it charged in its own database, which must outlive its pods." }}
{{- end }}
{{- end }}
{{- if and (eq .Values.migrations.mode "job") (not .Values.mysql.enabled) }}
{{- fail "migrations.mode=job needs mysql.enabled=true: the embedded SQLite store lives on the pod's volume, so only the server itself (migrations.mode=start) can migrate it." }}
{{- end }}
{{- end }}
