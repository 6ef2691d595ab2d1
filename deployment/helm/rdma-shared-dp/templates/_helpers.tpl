{{/* The image reference: repository and tag, the tag defaulting to the chart's appVersion. */}}
{{- define "rdma-shared-dp.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The kubelet's root folder without a trailing slash. */}}
{{- define "rdma-shared-dp.kubeletRoot" -}}
{{ trimSuffix "/" .Values.kubeletRootDir }}
{{- end -}}

{{/* One of files/*.yaml (the kustomize components' own manifests) in the release namespace, with
     extra labels merged in. Args: (list $ "file" labels namespaced). */}}
{{- define "rdma-shared-dp.component" -}}
{{- $root := index . 0 -}}
{{- $obj := $root.Files.Get (index . 1) | fromYaml -}}
{{- $_ := set $obj.metadata "labels" (merge (dict) (index . 2) ($obj.metadata.labels | default (dict))) -}}
{{- if index . 3 }}{{- $_ := set $obj.metadata "namespace" $root.Release.Namespace -}}{{- end }}
{{ toYaml $obj }}
{{- end -}}
